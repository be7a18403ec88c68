"""`python -m fewshot` (also what torchrun's `-m fewshot` runs)."""

from fewshot.cli import console_main

if __name__ == "__main__":
    raise SystemExit(console_main())
