"""How a model name with a tag timm does not know is refused depends on where the name came from: typed (advice on
the flag), read from a file (the file is blamed), or passed in code to create_backbone (neither)."""

from __future__ import annotations

import pytest

from fewshot.errors import UserError
from fewshot.models.backbone import RECORDED, create_backbone, timm_name


def test_create_backbone_words_a_name_passed_in_code_neutrally():
    """create_backbone('test_resnet.bogus') from Python was told the name was "recorded in the checkpoint ... not
    typed" and to use another timm version, though no file was read."""
    with pytest.raises(UserError) as caught:
        create_backbone("test_resnet.Bogus")
    said = str(caught.value)
    assert said.startswith("model test_resnet.Bogus: timm has no pretrained tag 'Bogus' for test_resnet; "), said
    assert "tags are r160_in1k" in said and "Use test_resnet without a tag or with one of its tags." in said
    assert "recorded" not in said and "timm version" not in said and "--weights" not in said


def test_create_backbone_words_a_name_read_from_a_file_as_recorded():
    with pytest.raises(UserError) as caught:
        create_backbone("test_resnet.bogus", source=RECORDED)
    said = str(caught.value)
    assert said.startswith(f"model test_resnet.bogus ({RECORDED}): timm has no pretrained tag 'bogus'"), said
    assert "another timm version" in said and "without a tag" not in said


def test_a_typed_name_keeps_the_advice_on_the_flag():
    with pytest.raises(UserError, match=r"model test_resnet\.bogus: .*Give test_resnet without a tag .*--weights"):
        timm_name("test_resnet.bogus")
