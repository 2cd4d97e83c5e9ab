"""The science package's named errors. One root, few leaves."""


class MedganError(Exception):
    """Root of every error raised on purpose by medgan/."""


class DataError(MedganError):
    """Input data is missing, empty, corrupt or of the wrong shape."""


class DivergenceError(MedganError):
    """Training produced a non-finite loss; the run stops with this reason."""


class CheckpointError(MedganError):
    """A checkpoint is missing, corrupt, or belongs to a different model."""
