"""fewshot: few-shot image classification over several datasets, with MoCo pretraining."""

__version__ = "0.1.0"
