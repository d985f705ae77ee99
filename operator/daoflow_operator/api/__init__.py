"""The API: one pydantic model per kind (models.py) and the CRDs generated from them (crdgen.py)."""

from .models import (  # noqa: F401
    API_VERSION, GROUP, KINDS, VERSION, BackupDestination, BackupRestore, BackupRestoreSpec,
    BackupRestoreStatus, BackupRun, Condition, RestorePlan,
)
