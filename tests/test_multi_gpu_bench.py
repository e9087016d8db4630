"""bench/multi_gpu_bench.py in its CPU mode (`--tiny`: gloo, 2 processes): TP=2 and DP=2 give TP=1's loss, grad
norm, gradient and parameter update in fp32, and the throughput/scaling rows come out. The same code path runs on
two GPUs with NCCL (`make bench-multi-gpu`); this keeps the bench's wiring of the parity steps (trainer/parity/tp_dp.py,
tested alone in tests/test_parity.py) beside its throughput steps exercised where CI runs."""

import json

from bench import multi_gpu_bench


def test_tiny_tp2_and_dp2_match_one_rank(tmp_path):
    # the parity runs and the two-independent-processes diagnostic (tp1b: tp1 again in a fresh process, left out)
    assert multi_gpu_bench.main(["--tiny", "--out", str(tmp_path), "--runs", "tp1,dp2+tp2,pair"]) == 0
    report = json.loads((tmp_path / "multi_gpu_tiny.json").read_text())
    assert report["backend"] == "gloo" and not report["errors"]
    assert set(report["runs"]) == {"tp1", "tp2", "dp2", "pair"}
    assert report["checks"] and all(report["checks"].values()), report["checks"]
    assert (report["runs"]["tp2"]["tp"], report["runs"]["tp2"]["dp"]) == (2, 1)
    assert (report["runs"]["dp2"]["tp"], report["runs"]["dp2"]["dp"]) == (1, 2)
    # fp32 on CPU: only summation order differs (seen ~1e-7); a missing TP reduction shows up as >1e-1
    for run in ("tp2", "dp2"):
        c = report["runs"][run]["parity"]["fp32_vs_tp1_fp32"]
        assert c["grad_norm_rel"] < 1e-5 and c["nll_rel"] < 1e-5, c
        assert c["grad"]["rel_l2"] < 1e-5 and c["grad"]["worst_tensor_rel_l2"] < 1e-4, c["grad"]
        assert c["update"]["rel_l2"] < 1e-3, c["update"]
        assert c["grad"]["elements"] == report["model"]["parameters"]
    # TP=2 halves the sharded weights on each rank
    assert report["runs"]["tp2"]["params_per_rank"] < 0.6 * report["runs"]["tp1"]["params_per_rank"]
    # DP=2 trains with the gradient all-reduce overlapped with the last backward and after it (interleaved steps):
    # a row each; the same parity step in both modes gives the same gradient and update (a + b in any bucketing)
    rows = {run: res["rows"] for run, res in report["runs"].items() if run != "pair"}
    assert all(
        len(r) == (2 if run == "dp2" else 1) and all(x["tokens_per_s"] > 0 for x in r) for run, r in rows.items()
    )
    assert [r["overlap_grad_reduce"] for r in rows["dp2"]] == [True, False]
    assert report["runs"]["dp2"]["parity"]["overlap_grad_reduce"] is True
    c = report["runs"]["dp2"]["parity"]["fp32_overlap_off_vs_on"]
    assert c["grad"]["rel_l2"] == 0 and c["update"]["rel_l2"] == 0 and c["grad_norm_rel"] == 0, c
    assert rows["dp2"][0]["gbs"] == 2 * rows["tp1"][0]["gbs"]
    pair = report["runs"]["pair"]["processes"]  # two world-1 processes, each with its own rows
    assert len(pair) == 2 and all(p["dp"] == 1 and p["rows"][0]["gbs"] == rows["tp1"][0]["gbs"] for p in pair)
    assert {s["run"] for s in report["scaling"]} == {"dp2", "tp2", "pair"}
    assert sorted(s.get("overlap_grad_reduce") for s in report["scaling"] if s["run"] == "dp2") == [False, True]
    assert all(s["scaling_efficiency"] > 0 for s in report["scaling"])
    assert report["runs"]["dp2"]["allreduce"]["grad_bytes"] == 4 * report["model"]["parameters"]
