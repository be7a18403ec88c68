"""`python -m fewshot` (also what torchrun's `-m fewshot` runs)."""

from fewshot.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
