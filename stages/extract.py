"""extract stage: declared in dvc.yaml; its implementation lands with a later issue.

Until then it stops with "not implemented yet" instead of pretending to succeed.
"""

from pipeline.errors import NotImplementedStage, run_cli


def main() -> None:
    raise NotImplementedStage("extract")


if __name__ == "__main__":
    run_cli(main)
