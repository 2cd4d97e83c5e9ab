"""The job system's named errors. `MedganUserError` and its children become one line + exit 1 at the CLI."""


class SchedulerError(Exception):
    """Root of every error the scheduler raises on purpose."""


class MedganUserError(SchedulerError):
    """Something the user can fix: bad spec, missing path, unknown job. Printed as one line."""


class SpecError(MedganUserError):
    """A job spec failed validation."""


class SettingsInvalid(MedganUserError):
    """A MEDGAN_* environment variable or .env value is malformed."""


class NotFound(MedganUserError):
    """No such job, artifact or dataset."""


class DatabaseUnavailable(MedganUserError):
    """The database cannot be reached or is not initialised."""


class IllegalTransition(SchedulerError):
    """A status change the state machine does not allow."""


class StoreError(SchedulerError):
    """The artifact store failed (after retries) or an object is corrupt."""


class InvalidKey(MedganUserError):
    """An object key or dataset name that would escape its prefix or contains odd characters."""
