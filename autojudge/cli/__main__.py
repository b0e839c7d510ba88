"""``python -m autojudge.cli ...``: the same as ``autojudge-trt ...``."""

from autojudge.cli import main

if __name__ == "__main__":
    main()
