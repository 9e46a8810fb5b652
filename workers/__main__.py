from .cli import worker

worker()
