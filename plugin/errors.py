"""The one error type a user ever sees: its text goes back to dockerd as ``{"Err": ...}``."""


class DriverError(Exception):
    """A refusal the user can act on: the message names the option and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
