"""`python -m trainer.predict`, the documented command; the code is `trainer.tools.predict`."""

if __name__ == "__main__":
    from trainer.tools import predict

    predict.command()
