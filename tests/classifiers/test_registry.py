"""The registry: safe format, integrity check, signatures, activate and roll back."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
import skops.io as sio

from classifiers.case_model import CaseModel
from classifiers.errors import IntegrityError, RegistryError
from classifiers.features import FeatureSpec, RecordFeaturizer
from classifiers.registry import ModelRegistry, load_trusted_artifact, open_model
from tests.classifiers.conftest import bitext_rows


@pytest.fixture(scope="module")
def bitext_model() -> CaseModel:
    """A deliberately small model: registry tests exercise files, not accuracy, and the size of
    the n-gram vocabularies is what makes saving and loading slow."""
    featurizer = RecordFeaturizer(char_ngram_range=(3, 3), max_features=3000)
    return CaseModel(
        spec=FeatureSpec(text_columns=("text",)),
        targets=("triage_category",),
        cv=3,
        featurizer=featurizer,
    ).fit(bitext_rows(12))


class Planted:
    """A type no allow-list names: stands for an attacker's payload class."""

    def __init__(self) -> None:
        self.payload = "echo owned"


def test_save_load_round_trip(tmp_path: Path, bitext_model: CaseModel) -> None:
    reg = ModelRegistry(tmp_path)
    version = reg.save(bitext_model, training_data_sha256="ab" * 32, activate=True)
    loaded = reg.load()
    assert loaded.version == version
    meta = loaded.metadata
    for key in (
        "artifact_sha256",
        "training_data_sha256",
        "label_sets",
        "thresholds",
        "created_at",
        "library_versions",
        "feature_spec",
        "validation",
    ):
        assert key in meta
    assert meta["label_sets"]["triage_category"] == bitext_model.label_sets()["triage_category"]
    records = [{"text": "where is my refund"}, {"text": "cancel order 42"}]
    before = bitext_model.predict(records)
    after = loaded.model.predict(records)
    assert [r["triage_category"].model_dump() for r in before] == [
        r["triage_category"].model_dump() for r in after
    ]


def test_tampered_artifact_is_refused(tmp_path: Path, bitext_model: CaseModel) -> None:
    reg = ModelRegistry(tmp_path)
    version = reg.save(bitext_model, activate=True)
    artifact = tmp_path / "versions" / version / "model.skops"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match"):
        reg.load()


def test_an_artifact_swapped_after_its_check_is_not_loaded(
    tmp_path: Path, bitext_model: CaseModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes hashed are the bytes loaded: a file replaced between the hash check and the
    load (by someone with write access to the registry) is not what gets loaded."""
    reg = ModelRegistry(tmp_path)
    version = reg.save(bitext_model, activate=True)
    artifact = tmp_path / "versions" / version / "model.skops"
    other = CaseModel(
        spec=FeatureSpec(text_columns=("text",)),
        targets=("triage_category",),
        cv=3,
        featurizer=RecordFeaturizer(char_ngram_range=(3, 3), max_features=500),
    ).fit(
        [{**r, "triage_category": "swapped"} if i % 2 else r for i, r in enumerate(bitext_rows(12))]
    )
    swapped = tmp_path / "other.skops"
    sio.dump(other, swapped)
    checked = ModelRegistry._verified

    def swap_after_check(self: ModelRegistry, v: str, data: bytes | None) -> dict:
        metadata = checked(self, v, data)
        artifact.write_bytes(swapped.read_bytes())  # the race, made certain
        return metadata

    monkeypatch.setattr(ModelRegistry, "_verified", swap_after_check)
    loaded = reg.load()
    assert "swapped" not in loaded.model.label_sets()["triage_category"]
    assert loaded.model.label_sets() == bitext_model.label_sets()
    monkeypatch.undo()
    with pytest.raises(IntegrityError, match="does not match"):
        reg.load()  # the next load sees the swapped file, and refuses it


def test_replaced_artifact_with_untrusted_type_is_refused(
    tmp_path: Path, bitext_model: CaseModel
) -> None:
    reg = ModelRegistry(tmp_path)
    version = reg.save(bitext_model, activate=True)
    vdir = tmp_path / "versions" / version
    sio.dump(Planted(), vdir / "model.skops")
    # even with the metadata hash "fixed up" by the attacker, the allow-list refuses the type
    meta = json.loads((vdir / "metadata.json").read_text())
    meta["artifact_sha256"] = hashlib.sha256((vdir / "model.skops").read_bytes()).hexdigest()
    (vdir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="not allowed"):
        reg.load()


def test_unknown_artifact_without_metadata_is_refused(
    tmp_path: Path, bitext_model: CaseModel
) -> None:
    stray = tmp_path / "stray"
    stray.mkdir()
    sio.dump(bitext_model, stray / "model.skops")
    with pytest.raises(IntegrityError, match="not a registered version"):
        open_model(stray)
    reg = ModelRegistry(tmp_path / "reg")
    version = reg.save(bitext_model)
    (tmp_path / "reg" / "versions" / version / "metadata.json").unlink()
    with pytest.raises(IntegrityError, match="no metadata"):
        reg.load(version)
    with pytest.raises(IntegrityError, match="not a readable skops artifact"):
        load_trusted_artifact(_not_skops(tmp_path))


def _not_skops(tmp_path: Path) -> Path:
    bogus = tmp_path / "bogus.skops"
    bogus.write_bytes(b"\x80\x04not a zip file")  # e.g. a pickle stream renamed
    return bogus


def test_signatures(tmp_path: Path, bitext_model: CaseModel) -> None:
    unsigned = ModelRegistry(tmp_path)
    version = unsigned.save(bitext_model, activate=True)
    with pytest.raises(IntegrityError, match="unsigned"):
        ModelRegistry(tmp_path, signing_key=b"secret").load(version)
    signed = ModelRegistry(tmp_path, signing_key=b"secret")
    v2 = signed.save(bitext_model)
    assert signed.load(v2).version == v2
    with pytest.raises(IntegrityError, match="invalid signature"):
        ModelRegistry(tmp_path, signing_key=b"other").load(v2)
    meta_path = tmp_path / "versions" / v2 / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["thresholds"]["triage_category"]["order"]["threshold"] = 0.0  # silent loosening
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="invalid signature"):
        signed.load(v2)


def test_activate_and_rollback(tmp_path: Path, bitext_model: CaseModel) -> None:
    reg = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="no active model"):
        reg.load()
    v1 = reg.save(bitext_model, activate=True)
    v2 = reg.save(bitext_model, activate=True)
    v3 = reg.save(bitext_model)
    assert reg.active_version() == v2
    reg.activate(v3)
    assert reg.rollback() == v2
    assert reg.rollback() == v1  # steps further back, does not toggle
    with pytest.raises(RegistryError, match="no earlier"):
        reg.rollback()
    assert [m["version"] for m in reg.versions()] == [v1, v2, v3]
    assert (tmp_path / "ACTIVE").read_text().strip() == v1


def test_crafted_version_ids_are_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    for bad in ("../../etc", "v1", "v20260101T000000000000Z-zzzzzzzz"):
        with pytest.raises(RegistryError):
            reg.activate(bad)


def test_open_model_accepts_a_root_or_a_version_dir(
    tmp_path: Path, bitext_model: CaseModel
) -> None:
    reg = ModelRegistry(tmp_path)
    v1 = reg.save(bitext_model, activate=True)
    v2 = reg.save(bitext_model)
    assert open_model(tmp_path).version == v1  # the active one
    assert open_model(tmp_path / "versions" / v2).version == v2
    with pytest.raises(RegistryError, match="neither"):
        open_model(tmp_path / "versions")


def test_in_memory_transposes_stay_out_of_artifacts(
    tmp_path: Path, bitext_model: CaseModel
) -> None:
    """Predicting fills the estimators' transposed-matrix caches (classifiers.linalg); a model
    saved afterwards must not carry them: the artifact holds fitted state only."""
    records = [{"text": "where is my refund"}, {"text": "cancel order 42"}]
    bitext_model.predict(records)
    expected = bitext_model.predict_proba(records)["triage_category"]
    estimator = bitext_model.estimators_["triage_category"]
    assert "_transposed_cache" in estimator.__dict__
    assert "_transposed_cache" in bitext_model.__dict__
    reg = ModelRegistry(tmp_path)
    reg.save(bitext_model, training_data_sha256="ab" * 32, activate=True)
    loaded = reg.load().model
    assert "_transposed_cache" not in loaded.__dict__
    assert "_transposed_cache" not in loaded.estimators_["triage_category"].__dict__
    # the model that was saved still has its caches (the state was copied, not emptied)
    assert "_transposed_cache" in estimator.__dict__
    assert (loaded.predict_proba(records)["triage_category"] == expected).all()


def test_vocabularies_are_stored_as_a_few_arrays_not_one_file_per_term(
    tmp_path: Path, bitext_model: CaseModel
) -> None:
    """skops writes each numpy scalar as its own file: the vocabularies' column numbers are
    plain ints, so the artifact holds a handful of arrays however many terms it knows."""
    import zipfile

    fz = bitext_model.featurizer_
    terms = len(fz.word_vectorizer_.vocabulary_) + len(fz.char_vectorizer_.vocabulary_)
    for vectorizer in (fz.word_vectorizer_, fz.char_vectorizer_):
        assert {type(c) for c in vectorizer.vocabulary_.values()} == {int}
    reg = ModelRegistry(tmp_path)
    version = reg.save(bitext_model)
    files = zipfile.ZipFile(tmp_path / "versions" / version / "model.skops").namelist()
    assert terms > 1000 and len(files) < 50
    rows = bitext_rows(2, seed=5)
    assert (reg.load(version).model.transform(rows) != bitext_model.transform(rows)).nnz == 0


def test_signing_an_unsigned_registry(tmp_path: Path, bitext_model: CaseModel) -> None:
    """Turning signing on: each existing version is signed after its artifact hash is checked;
    a tampered one is refused; a keyless registry cannot sign."""
    plain = ModelRegistry(tmp_path)
    first, second = plain.save(bitext_model), plain.save(bitext_model)
    keyed = ModelRegistry(tmp_path, signing_key=b"k1")
    with pytest.raises(IntegrityError, match="unsigned"):
        keyed.verify(first)
    with pytest.raises(RegistryError, match="needs a key"):
        plain.sign(first)
    (signed,) = keyed.sign(first)
    assert keyed.verify(first) == signed and signed["signature"]
    artifact = tmp_path / "versions" / second / "model.skops"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="does not match"):
        keyed.sign(second)
    assert "signature" not in plain.metadata(second)
    # all checked before any is signed: a tampered version in the call signs none of them
    with pytest.raises(IntegrityError, match="does not match"):
        ModelRegistry(tmp_path, signing_key=b"k3").sign(first, second)
    assert keyed.verify(first) == signed
    # rotating: a new key re-signs, after which the old key no longer verifies
    ModelRegistry(tmp_path, signing_key=b"k2").sign(first)
    with pytest.raises(IntegrityError, match="invalid signature"):
        keyed.verify(first)


def test_concurrent_activations_keep_the_log_and_the_pointer_in_step(
    tmp_path: Path, bitext_model: CaseModel
) -> None:
    """Admins activating and rolling back at once (API threads, the CLI): every log entry's
    ``previous`` is the version the entry before it activated, and ACTIVE is the last one;
    interleaved read-pointer / write-pointer / append-log steps broke that chain."""
    import threading

    reg = ModelRegistry(tmp_path)
    versions = [reg.save(bitext_model, activate=True) for _ in range(3)]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def admin(offset: int) -> None:
        mine = ModelRegistry(tmp_path)  # as each request or command builds its own
        start.wait()
        try:
            for i in range(25):
                if i % 5 == 4:
                    mine.rollback()
                else:
                    mine.activate(versions[(i + offset) % 3])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=admin, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    log = reg.activations()
    assert len(log) == 3 + 4 * 25
    for before, entry in itertools.pairwise(log):
        assert entry["previous"] == before["version"], (before, entry)
    assert reg.active_version() == log[-1]["version"]
