"""`python -m trainer.evaluate`, the documented command; the code is `trainer.tools.evaluate`."""

if __name__ == "__main__":
    from trainer.tools import evaluate

    evaluate.command()
