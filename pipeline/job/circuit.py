"""The circuit that stops hammering storage that is down."""

from __future__ import annotations

from pipeline import store
from pipeline.store.manifest import ManifestRow

NOT_ATTEMPTED = "not attempted"


class Circuit:
    """After `threshold` images in a row fail with StorageUnavailable (each after up to a
    minute of retries), the images left are not attempted: they get a failed row at once,
    which `upscaler rerun` redoes once storage is back. An image in flight that then
    succeeds closes it again. Permanent storage errors (a name too long, no permission)
    are about one key, not the store, and do not count."""

    def __init__(self, threshold: int):
        self.threshold, self.streak, self.last = threshold, 0, ""

    def record(self, row: ManifestRow) -> None:
        if row.ok:
            self.streak = 0
        elif row.error_type == "StorageUnavailable" and NOT_ATTEMPTED not in (row.error or ""):
            self.streak, self.last = self.streak + 1, row.error

    @property
    def open(self) -> bool:
        return 0 < self.threshold <= self.streak

    def refusal(self) -> store.StorageUnavailable:
        return store.StorageUnavailable(f"{NOT_ATTEMPTED}: storage unreachable ({self.streak} images in a row "
                                        f"failed on it; last: {self.last})")
