"""Errors that end a run with a clear message (the CLI prints them without a traceback)."""


class NormlabError(Exception):
    """Base of the errors whose message is the whole story for the user."""


class NonFiniteLossError(NormlabError):
    """The training loss became NaN or infinite; the message names the step and checkpoint."""
