"""One process per embedded vector store: a server, a worker and the CLI's writing commands
claim it, and a second claimant is refused with the holder's name and the remedy (Chroma's
embedded mode keeps each process's index in memory, so another process's writes go unseen)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval.errors import StoreError
from retrieval.store import ChromaConfig, claim_embedded
from tests.support import cli_runner
from triage import migrate
from triage.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
HOLDER = (
    "import sys; from pathlib import Path; from retrieval.store import ChromaConfig, "
    "claim_embedded; claim_embedded(ChromaConfig(path=Path(sys.argv[1])), 'a test server'); "
    "print('claimed', flush=True); sys.stdin.read()"
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(
        environment="test", data_dir=tmp_path / "data", database_url=None, worker_enabled=False
    )
    migrate.upgrade(settings)
    return settings


@pytest.fixture
def held(settings: Settings) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the deployment's embedded store, until the test ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(settings.data_dir / "chroma")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
    yield proc
    proc.communicate(timeout=30)


def test_a_second_process_is_refused_until_the_holder_exits(settings, held):
    config = ChromaConfig(path=settings.data_dir / "chroma")
    with pytest.raises(StoreError) as refused:
        claim_embedded(config, "this test")
    message = str(refused.value)
    assert f"in use by a test server (pid {held.pid})" in message
    assert "TRIAGE_CHROMA_URL" in message
    held.communicate(timeout=30)  # the holder exits: the kernel drops its lock
    claim_embedded(config, "this test")
    claim_embedded(config, "this test")  # this process holds it already: no-op
    assert (config.path / ".triage-owner").read_text().startswith("this test (pid ")
    claim_embedded(ChromaConfig(path=config.path, url="http://127.0.0.1:1"), "x")  # a server


def test_writing_commands_and_workers_are_refused_while_a_server_holds_it(
    settings, held, monkeypatch
):
    triage = cli_runner(monkeypatch, settings)
    chroma = str(settings.data_dir / "chroma")
    ingest = triage("kb", "ingest", str(ROOT / "knowledge"), "--chroma-path", chroma)
    assert ingest.exit_code == 2, ingest.output
    assert "in use by a test server" in ingest.stderr
    reindex = triage("kb", "reindex", "--chroma-path", chroma)
    assert reindex.exit_code == 2 and "in use by a test server" in reindex.stderr
    worker = triage("worker", "--once")
    assert worker.exit_code == 2, worker.output
    assert "in use by a test server" in worker.stderr and "Nothing was started." in worker.stderr
    search = triage("kb", "search", "damaged pallet", "--chroma-path", chroma)
    assert search.exit_code == 0, search.output  # reading needs no claim
