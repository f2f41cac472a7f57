"""`python -m trainer.ensemble`, the documented command; the code is `trainer.tools.ensemble`."""

if __name__ == "__main__":
    from trainer.tools import ensemble

    ensemble.command()
