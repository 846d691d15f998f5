"""Versioned model registry on a plain directory, safe to load.

Layout under the caller-given ``root``::

    root/ACTIVE                      the active version id (replaced atomically)
    root/activations.jsonl           append-only log of activations and rollbacks
    root/.lock                       serialises activations, rollbacks and signing
    root/versions/<id>/model.skops   the fitted CaseModel, skops format
    root/versions/<id>/metadata.json version, hashes, label sets, thresholds, metrics, ...

Security contract:
- Artifacts are written and read with skops, never pickle/joblib. Loading refuses any type
  outside scikit-learn/numpy/scipy's defaults and :data:`TRUSTED_TYPES` (our own estimator
  classes), so a planted file cannot execute code through unpickling.
- ``metadata.json`` records the artifact's sha256; :meth:`ModelRegistry.load` recomputes it and
  refuses a mismatch (tampered or corrupted artifact) and any artifact without metadata (an
  unknown file). With a ``signing_key`` every version's metadata carries an HMAC-SHA256 over its
  canonical JSON; loading then also refuses unsigned or wrongly signed versions, so someone who
  can write into the registry directory but does not hold the key cannot substitute a model.
- Version ids are generated here (``v<UTC timestamp>-<8 hex of the artifact hash>``) and are
  validated before they touch the filesystem, so a crafted id cannot escape ``root``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import sklearn
import skops
import skops.io as sio

from classifiers.case_model import CaseModel
from classifiers.errors import IntegrityError, RegistryError, SignatureError, UnknownVersion

try:  # POSIX: processes sharing a registry (server, CLI) queue on a file lock
    import fcntl
except ImportError:  # pragma: no cover - Windows: threads of one process still queue
    fcntl = None  # type: ignore[assignment]

TRUSTED_TYPES: tuple[str, ...] = (
    "classifiers.calibration.CalibratedLinearClassifier",
    "classifiers.case_model.CaseModel",
    "classifiers.features.FeatureSpec",
    "classifiers.features.RecordFeaturizer",
    "classifiers.operating_points.ThresholdStats",
)
"""Our own classes that may appear in an artifact, besides skops' default-trusted types."""

ARTIFACT_NAME = "model.skops"
METADATA_NAME = "metadata.json"
ACTIVE_NAME = "ACTIVE"
LOG_NAME = "activations.jsonl"
LOCK_NAME = ".lock"
METADATA_SCHEMA = "1"
_VERSION_RE = re.compile(r"^v\d{8}T\d{12}Z-[0-9a-f]{8}$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(metadata: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in metadata.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def _metadata_text(metadata: Mapping[str, Any]) -> str:
    """A version's ``metadata.json`` as written (readable; the signature covers
    :func:`_canonical`, not this layout)."""
    return json.dumps(metadata, indent=2, default=str)


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and ``os.replace`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "skops": skops.__version__,
    }


def load_trusted_artifact(path: Path | str) -> CaseModel:
    """Load a skops file, refusing every type outside the defaults and :data:`TRUSTED_TYPES`.

    This does no hash check: use :meth:`ModelRegistry.load` for registered versions.
    """
    path = Path(path)
    return load_trusted_bytes(path.read_bytes(), path.name)


def load_trusted_bytes(data: bytes, name: str) -> CaseModel:
    """:func:`load_trusted_artifact` on an artifact's bytes (``name`` is for messages): the
    registry hashes and loads the same bytes, so the file cannot change between the two."""
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # skops raises various errors for non-skops content
        raise IntegrityError(f"{name} is not a readable skops artifact: {exc}") from None
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise IntegrityError(f"{name} contains types that are not allowed: {refused}")
    model = sio.loads(data, trusted=list(untrusted))
    if not isinstance(model, CaseModel):
        raise IntegrityError(f"{name} does not hold a CaseModel")
    return model


@dataclass(frozen=True)
class LoadedModel:
    """A verified model with its registry metadata."""

    version: str
    model: CaseModel
    metadata: dict[str, Any]


_ROOT_LOCKS: dict[str, threading.RLock] = {}
_ROOT_LOCKS_GUARD = threading.Lock()
_HELD = threading.local()  # the roots whose file lock this thread holds (for nesting)


@contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold ``root``'s registry lock: a re-entrant lock for the threads of this process and a
    file lock for other processes (a rollback re-enters through ``activate``). Reading the
    pointer, replacing it and appending to the log happen under it, so two admins activating
    at once cannot leave the log's ``previous`` chain (what rollback replays) out of step with
    ACTIVE."""
    root.mkdir(parents=True, exist_ok=True)
    key = str(root.resolve())
    with _ROOT_LOCKS_GUARD:
        local = _ROOT_LOCKS.setdefault(key, threading.RLock())
    with local:
        held: set[str] = getattr(_HELD, "roots", set())
        _HELD.roots = held
        if fcntl is None or key in held:
            yield
            return
        with open(root / LOCK_NAME, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            held.add(key)
            try:
                yield
            finally:
                held.discard(key)
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class ModelRegistry:
    """Save, verify, list, activate and roll back :class:`CaseModel` versions under ``root``."""

    def __init__(self, root: Path | str, signing_key: bytes | None = None) -> None:
        self.root = Path(root)
        self.signing_key = signing_key

    def exclusive(self) -> AbstractContextManager[None]:
        """A context holding this registry's lock: activations, rollbacks and signing by other
        threads and processes wait until it ends (this thread may still call them). For a
        decision that reads the active version and then acts on it (retraining)."""
        return _exclusive(self.root)

    # -- paths -----------------------------------------------------------------------------------
    def _version_dir(self, version: str) -> Path:
        if not _VERSION_RE.match(version):
            raise UnknownVersion(f"{version!r} is not a valid model version id")
        return self.root / "versions" / version

    # -- writing ---------------------------------------------------------------------------------
    def save(
        self,
        model: CaseModel,
        *,
        training_data_sha256: str | None = None,
        training_data_name: str | None = None,
        n_training_records: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        activate: bool = False,
    ) -> str:
        """Store a fitted model as a new version; returns its id. Optionally activate it."""
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self._ensure_root()))
        try:
            artifact = staging / ARTIFACT_NAME
            sio.dump(model, artifact)
            digest = _sha256(artifact)
            now = datetime.now(UTC)
            version = f"v{now:%Y%m%dT%H%M%S%f}Z-{digest[:8]}"
            metadata: dict[str, Any] = {
                "schema": METADATA_SCHEMA,
                "version": version,
                "created_at": now.isoformat(),
                "artifact": ARTIFACT_NAME,
                "artifact_format": "skops",
                "artifact_sha256": digest,
                "training_data_sha256": training_data_sha256,
                "training_data_name": training_data_name,
                "n_training_records": n_training_records,
                "targets": list(model.targets),
                "label_sets": model.label_sets(),
                "thresholds": model.thresholds_dict(),
                "validation": model.validation_,
                "metrics": dict(metrics or {}),
                "feature_spec": model.feature_spec().to_dict(),
                "params": _json_params(model),
                "library_versions": library_versions(),
                **dict(extra or {}),
            }
            if self.signing_key is not None:
                metadata["signature"] = self._sign(metadata)
            (staging / METADATA_NAME).write_text(_metadata_text(metadata), encoding="utf-8")
            target = self._version_dir(version)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)  # the version appears complete or not at all
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if activate:
            self.activate(version)
        return version

    def _ensure_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def _sign(self, metadata: Mapping[str, Any]) -> str:
        assert self.signing_key is not None
        return hmac.new(self.signing_key, _canonical(metadata), hashlib.sha256).hexdigest()

    def sign(self, *versions: str) -> list[dict[str, Any]]:
        """Sign each version's metadata with this registry's key; returns the metadata.

        For turning signing on in a registry that holds unsigned versions (or rotating the key):
        every artifact's recorded hash is checked before any version is signed, so a changed
        artifact refuses the whole call and none or all are signed; an existing signature is
        replaced without being checked, since the caller holding the key is deciding to trust
        the version. ``RegistryError`` without a key."""
        if self.signing_key is None:
            raise RegistryError("signing needs a key (TRIAGE_MODEL_SIGNING_KEY / --signing-key)")
        keyless = ModelRegistry(self.root)
        with _exclusive(self.root):
            checked = [keyless.verify(v) for v in versions]  # the hashes, not old signatures
            for version, metadata in zip(versions, checked, strict=True):
                metadata["signature"] = self._sign(metadata)  # the old one is not part of it
                path = self._version_dir(version) / METADATA_NAME
                _atomic_write(path, _metadata_text(metadata))
        return checked

    def activate(self, version: str, *, action: str = "activate") -> str | None:
        """Make ``version`` the active one (verified first); logged in ``activations.jsonl``.
        Serialised with other activations, rollbacks and signing of this registry; returns the
        version it replaced (read under the lock, so an audit record of the change is exact)."""
        self.verify(version)
        with _exclusive(self.root):
            previous = self.active_version()
            _atomic_write(self.root / ACTIVE_NAME, version + "\n")
            entry = {
                "at": datetime.now(UTC).isoformat(),
                "action": action,
                "version": version,
                "previous": previous,
            }
            with (self.root / LOG_NAME).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
            return previous

    def rollback(self) -> str:
        """Re-activate the version that was active before the current one; returns it.

        The activation log is replayed as a stack (activate pushes, rollback pops), so repeated
        rollbacks step further back instead of toggling between the last two versions.
        """
        with _exclusive(self.root):
            current = self.active_version()
            if current is None:
                raise RegistryError("nothing is active, so there is nothing to roll back")
            stack = self._activation_stack()
            while stack and stack[-1] == current:
                stack.pop()
            if not stack:
                raise RegistryError(f"no earlier active version to roll back to from {current}")
            previous = stack[-1]
            self.activate(previous, action="rollback")
            return previous

    def _activation_stack(self) -> list[str]:
        stack: list[str] = []
        for entry in self.activations():
            version = str(entry.get("version"))
            if entry.get("action") == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != version:
                    stack.append(version)
            else:
                stack.append(version)
        return stack

    # -- reading ---------------------------------------------------------------------------------
    def activations(self) -> list[dict[str, Any]]:
        log = self.root / LOG_NAME
        if not log.exists():
            return []
        out = []
        for line in log.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def active_version(self) -> str | None:
        pointer = self.root / ACTIVE_NAME
        if not pointer.exists():
            return None
        text = pointer.read_text(encoding="utf-8").strip()
        return text or None

    def versions(self) -> list[dict[str, Any]]:
        """Metadata of every registered version, oldest first (unverified; see ``verify``)."""
        base = self.root / "versions"
        if not base.is_dir():
            return []
        out = []
        for child in sorted(base.iterdir()):
            meta = child / METADATA_NAME
            if _VERSION_RE.match(child.name) and meta.is_file():
                out.append(json.loads(meta.read_text(encoding="utf-8")))
        return out

    def metadata(self, version: str) -> dict[str, Any]:
        meta = self._version_dir(version) / METADATA_NAME
        if not meta.is_file():
            raise UnknownVersion(f"unknown model version {version} in {self.root}")
        try:
            data: dict[str, Any] = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise IntegrityError(f"metadata of {version} is not valid JSON") from None
        return data

    def verify(self, version: str) -> dict[str, Any]:
        """Check metadata, signature and artifact hash; returns the metadata or raises."""
        return self._verified(version, None)

    def _verified(self, version: str, data: bytes | None) -> dict[str, Any]:
        """:meth:`verify`, hashing ``data`` (the artifact's bytes, read once by :meth:`load`)
        instead of the file when given."""
        directory = self._version_dir(version)
        artifact = directory / ARTIFACT_NAME
        if not artifact.is_file():
            raise UnknownVersion(f"unknown model version {version}: no artifact in {directory}")
        if not (directory / METADATA_NAME).is_file():
            raise IntegrityError(f"{artifact} has no metadata: refusing an unregistered artifact")
        metadata = self.metadata(version)
        if metadata.get("version") != version:
            raise IntegrityError(f"metadata of {version} names another version")
        if metadata.get("artifact_format") != "skops":
            raise IntegrityError(f"{version}: unsupported artifact format")
        if self.signing_key is not None:
            signature = metadata.get("signature")
            if not signature:
                raise SignatureError(f"{version} is unsigned; this registry requires signatures")
            if not hmac.compare_digest(str(signature), self._sign(metadata)):
                raise SignatureError(f"{version} has an invalid signature")
        expected = metadata.get("artifact_sha256")
        actual = _sha256(artifact) if data is None else hashlib.sha256(data).hexdigest()
        if not expected or not hmac.compare_digest(str(expected), actual):
            raise IntegrityError(
                f"{version}: artifact sha256 {actual[:12]}… does not match the recorded "
                f"{str(expected)[:12]}…; the file was modified or corrupted"
            )
        return metadata

    def load(self, version: str | None = None) -> LoadedModel:
        """Verify and load ``version`` (default: the active one)."""
        version = version or self.active_version()
        if version is None:
            raise RegistryError(f"no active model in {self.root}; train or activate one first")
        artifact = self._version_dir(version) / ARTIFACT_NAME
        try:
            # one read: the bytes that are hashed are the bytes that are loaded (a file swapped
            # after the check and before the load would otherwise be loaded as verified)
            data = artifact.read_bytes()
        except FileNotFoundError:
            raise UnknownVersion(
                f"unknown model version {version}: no artifact in {artifact.parent}"
            ) from None
        metadata = self._verified(version, data)
        model = load_trusted_bytes(data, artifact.name)
        return LoadedModel(version=version, model=model, metadata=metadata)


def open_model(path: Path | str, signing_key: bytes | None = None) -> LoadedModel:
    """Load from a registry root (its active version) or from one version's directory."""
    path = Path(path)
    if (path / METADATA_NAME).is_file() and path.parent.name == "versions":
        return ModelRegistry(path.parent.parent, signing_key).load(path.name)
    if (path / ACTIVE_NAME).is_file() or (path / "versions").is_dir():
        return ModelRegistry(path, signing_key).load()
    if (path / ARTIFACT_NAME).is_file():
        raise IntegrityError(f"{path / ARTIFACT_NAME} is not a registered version; refusing it")
    raise RegistryError(f"{path} is neither a model registry nor a model version directory")


def _json_params(model: CaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in model.get_params(deep=False).items():
        if key in ("spec", "featurizer"):
            continue
        try:
            json.dumps(value)
        except TypeError:
            value = repr(value)
        out[key] = value
    return out
