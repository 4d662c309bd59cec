"""Many workers on one tree: claims, takeovers, shards, local worker processes, report merge."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from upsr.infer import claims as claims_mod
from upsr.infer import workers
from upsr.infer.batch import BatchOptions, EnhanceOptions, plan_items
from upsr.infer.claims import Claims, claim_path, read_claim

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path, n: int = 6, seconds: float = 0.4, sr: int = 22050) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        p = root / ("sub" if i % 2 else "") / f"f{i}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        x = 0.2 * np.sin(2 * np.pi * (300 + 40 * i) * np.arange(int(seconds * sr)) / sr)
        x += 0.01 * rng.standard_normal(x.shape)
        sf.write(str(p), x.astype(np.float32), sr, subtype="PCM_16")
    return root


def _opts() -> BatchOptions:
    return BatchOptions(engine=EnhanceOptions(chunk_s=2.0, batch_size=1), cutoff_hz=4000.0)


def _outputs(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claim_is_exclusive_between_racing_claimers(tmp_path):
    target = tmp_path / "x.wav"
    wins: list[int] = []
    start = threading.Barrier(8)

    def claimer(i: int) -> None:
        c = Claims(60, heartbeat=False)
        start.wait()
        if c.try_claim(target):
            wins.append(i)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    info = read_claim(claim_path(target))
    assert info is not None and info.host == claims_mod.host_name() and info.pid == os.getpid()


def test_stale_claims_are_taken_over_live_ones_are_not(tmp_path):
    c = Claims(timeout_s=30, heartbeat=False)
    # a dead process on this host: stale at once
    dead = tmp_path / "dead.wav"
    claim_path(dead).write_text(json.dumps({"host": claims_mod.host_name(), "pid": _dead_pid(),
                                            "start": 0, "token": "t-dead"}))
    assert c.try_claim(dead)
    assert read_claim(claim_path(dead)).token != "t-dead"
    # another host, refreshed recently: live; not refreshed for longer than the timeout: stale
    other = tmp_path / "other.wav"
    claim_path(other).write_text(json.dumps({"host": "elsewhere", "pid": 1, "start": 0,
                                             "token": "t-other"}))
    assert not c.try_claim(other)
    old = time.time() - 31
    os.utime(claim_path(other), (old, old))
    assert c.try_claim(other)
    # a live process on this host (ourselves, from another Claims object): not taken
    mine = tmp_path / "mine.wav"
    assert Claims(30, heartbeat=False).try_claim(mine)
    assert not c.try_claim(mine)
    c.release(dead)
    c.release(other)
    assert not claim_path(dead).exists() and not claim_path(other).exists()


def test_heartbeat_keeps_a_long_claim_fresh(tmp_path):
    c = Claims(timeout_s=0.4)   # heartbeat every 0.1 s
    assert c.try_claim(tmp_path / "long.wav")
    time.sleep(0.8)
    info = read_claim(claim_path(tmp_path / "long.wav"))
    assert info is not None and info.age_s < 0.4
    c.close()
    assert not claim_path(tmp_path / "long.wav").exists()


def test_shards_cover_the_tree_exactly_once(tmp_path):
    src = _tree(tmp_path / "in", n=1)
    for i in range(40):   # planning needs real audio; copies of one file are enough
        p = src / f"d{i % 5}" / f"g{i}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes((src / "f0.wav").read_bytes())
    items = plan_items([str(src)], str(tmp_path / "out"), None)
    n = 4
    parts = [workers.select_shard(items, str(tmp_path / "out"), (k, n)) for k in range(n)]
    seen = [it.dst for part in parts for it in part]
    assert sorted(seen) == sorted(it.dst for it in items)    # every file, none twice
    assert all(parts)                                         # 41 files: no shard is empty
    # stable: the shard of a file depends on its relative path only
    again = plan_items([str(src)], str(tmp_path / "elsewhere"), None)
    keys = {workers.shard_key(it, str(tmp_path / "out")) for it in parts[1]}
    assert keys == {workers.shard_key(it, str(tmp_path / "elsewhere"))
                    for it in workers.select_shard(again, str(tmp_path / "elsewhere"), (1, n))}
    assert workers.parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "x", "1/0"):
        try:
            workers.parse_shard(bad)
        except Exception as exc:  # UsageError: one line for the CLI
            assert "K/N" in str(exc)
        else:
            raise AssertionError(bad)


def _race_worker(src: str, out: str, report: str) -> None:
    items = plan_items([src], out, None)
    done = workers.run_workers(items, "sbr", _opts(), out, poll_s=0.05)
    Path(report).write_text(json.dumps({"model": "sbr", "files": [it.record() for it in done]}))


def test_two_processes_racing_on_one_tree_do_every_file_once(tmp_path):
    src = _tree(tmp_path / "in", n=6, seconds=0.3)
    out = tmp_path / "out"
    ctx = workers.worker_context()   # two real processes, as --jobs starts them
    procs = [ctx.Process(target=_race_worker, args=(str(src), str(out),
                                                    str(tmp_path / f"r{i}.json")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    reports = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    done = [f["src"] for r in reports for f in r["files"] if f["status"] == "done"]
    assert sorted(done) == sorted(str(p) for p in src.rglob("*.wav"))   # each exactly once
    assert all(f["status"] in ("done", "exists", "done-elsewhere")
               for r in reports for f in r["files"])
    assert _outputs(out) == _outputs(src)                               # no claims left
    from upsr.cli.report import merge_reports

    merged = merge_reports(reports)
    assert merged["counts"] == {"done": 6}


def test_report_merge_cli(run_cli, tmp_path):
    a = {"model": "sbr", "worker": {"rank": 0}, "files": [
        {"src": "x.wav", "status": "failed"}, {"src": "y.wav", "status": "done"}]}
    b = {"model": "sbr", "worker": {"rank": 1}, "files": [
        {"src": "x.wav", "status": "done", "audio_s": 2.0, "wall_s": 1.0},
        {"src": "y.wav", "status": "done-elsewhere"}]}
    for name, d in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(d))
    code, _, err = run_cli("report", "merge", tmp_path / "a.json", tmp_path / "b.json", "-o",
                           tmp_path / "m.json")
    assert code == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert {f["src"]: f["status"] for f in m["files"]} == {"x.wav": "done", "y.wav": "done"}
    assert m["counts"] == {"done": 2} and len(m["workers"]) == 2 and m["audio_s"] == 2.0
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, _, err = run_cli("report", "merge", tmp_path / "bad.json")
    assert code == 1 and err.startswith("upsr: error:") and "Traceback" not in err


def test_a_killed_workers_file_is_finished_by_another(tmp_path):
    src = _tree(tmp_path / "in", n=2)
    out = tmp_path / "out"
    items = plan_items([str(src)], str(out), None)
    # what `kill -9` leaves mid-file: its claim and its temporary output
    pid = _dead_pid()
    victim = Path(items[0].dst)
    victim.parent.mkdir(parents=True, exist_ok=True)
    claim_path(victim).write_text(json.dumps({"host": claims_mod.host_name(), "pid": pid,
                                              "start": time.time(), "token": "killed"}))
    from upsr.fsutil import tmp_prefix

    partial = victim.parent / f"{tmp_prefix(pid)}abc.wav"
    partial.write_bytes(b"partial")
    done = workers.run_workers(items, "sbr", _opts(), str(out), poll_s=0.05)
    assert sorted(it.status for it in done) == ["done", "done"]
    assert _outputs(out) == _outputs(src)          # the claim and the partial file are gone
    assert sf.info(str(victim)).frames == round(0.4 * 22050) * 2  # sbr: 22.05 -> 44.1 kHz


def test_a_file_held_by_a_live_worker_is_waited_for_not_skipped(tmp_path):
    src = _tree(tmp_path / "in", n=2)
    out = tmp_path / "out"
    items = plan_items([str(src)], str(out), None)
    other = Claims(60, heartbeat=False)
    assert other.try_claim(items[0].dst)

    def finish_elsewhere() -> None:   # the other worker finishes after a while
        time.sleep(0.5)
        Path(items[0].dst).write_bytes((src / "f0.wav").read_bytes())
        other.release(items[0].dst)

    t = threading.Thread(target=finish_elsewhere)
    t.start()
    done = workers.run_workers(items, "sbr", _opts(), str(out), poll_s=0.05)
    t.join()
    assert {it.src: it.status for it in done} == {items[0].src: "done-elsewhere",
                                                  items[1].src: "done"}


def test_jobs_2_is_byte_identical_to_jobs_1(tmp_path):
    src = _tree(tmp_path / "in", n=4)
    outs = []
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        items = plan_items([str(src)], str(out), None)
        done = workers.run_workers(items, "sbr", _opts(), str(out), jobs=jobs, poll_s=0.05)
        assert sorted(it.status for it in done) == ["done"] * 4
        outs.append(out)
    assert _outputs(outs[0]) == _outputs(outs[1]) == _outputs(src)
    for rel in _outputs(outs[0]):
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes()


def test_launcher_environment_gives_rank_device_and_report():
    r = workers.dist_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "1"})
    assert (r.rank, r.world, r.local_rank, r.launcher) == (2, 4, 1, "torchrun")
    s = workers.dist_env({"SLURM_NTASKS": "3", "SLURM_PROCID": "2", "SLURM_LOCALID": "0"})
    assert (s.rank, s.world, s.launcher) == (2, 3, "slurm")
    assert workers.dist_env({}).world == 1
    assert workers.device_for_rank("cpu", r) == "cpu"
    assert workers.report_path(Path("r.json"), r) == Path("r.rank2.json")
    assert workers.report_path(Path("r.json"), workers.Rank()) == Path("r.json")
