import json
import os
import subprocess
import sys

from scripts.tables import make_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, recs):
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def _run(subset, method, arch, ipc, seed, best, last, select="none"):
    return {"kind": "run", "subset": subset, "method": method, "arch": arch, "ipc": ipc, "seed": seed,
            "best": best, "last": last, "select": select, "train": f"/x/{method}"}


def test_table1_values(tmp_path):
    recs = [_run("imagewoof", "minimax", "resnetap10", 10, s, b, b - 2) for s, b in enumerate([38.0, 39.0, 40.0])]
    recs += [_run("imagewoof", None, "convnet6", 50, 0, 45.0, 44.0, select="herding")]
    recs += [_run("imagewoof", None, "resnet18", None, 0, 88.0, 87.0, select="full")]
    recs += [{"kind": "summary", "subset": "imagewoof", "best_mean": 1.0}]
    _write(tmp_path / "a.jsonl", recs)
    (tmp_path / "b.jsonl").write_text(json.dumps(_run("imagewoof", "dit", "convnet6", 10, 0, 30.0, 29.0)) + "\n{tor")
    md, csv_text = make_tables([str(tmp_path)], "best", ["1", "3"])
    assert "Table 3" not in md  # no result of its subsets
    lines = md.splitlines()
    row = next(l for l in lines if l.startswith("| imagewoof | 10 | ResNetAP-10 |"))
    assert "39.0 ± 0.8 (39.2 ± 1.3, -0.2)" in row  # mean, sample std, paper, difference
    row = next(l for l in lines if l.startswith("| imagewoof | 50 | ConvNet-6 |"))
    assert "45.0 ± 0.0 (40.3, +4.7)" in row  # herding from the `select` field; paper gives no std
    row = next(l for l in lines if l.startswith("| imagewoof | full | ResNet-18 |"))
    assert row.rstrip(" |").endswith("88.0 ± 0.0 (89.3 ± 1.2, -1.3)")
    row = next(l for l in lines if l.startswith("| imagewoof | 10 | ConvNet-6 |"))
    assert "30.0 ± 0.0 (34.2, -4.2)" in row and "– (24.3)" in row  # DiT measured, Random only published
    md_last, _ = make_tables([str(tmp_path)], "last", ["1"])
    assert "37.0 ± 0.8 (39.2 ± 1.3, -2.2)" in md_last
    assert "1,imagewoof,10,resnetap10,minimax,best,3,39.0,0.816,39.2,1.3,-0.2" in csv_text.splitlines()


def test_table5_and_cli(tmp_path):
    _write(tmp_path / "r.jsonl", [_run("imageidc", "mean-off", "resnetap10", 50, s, v, v) for s, v in
                                  enumerate([60.0, 61.0])])
    out = subprocess.run([sys.executable, "scripts/tables.py", str(tmp_path), "--tables", "5", "--out",
                          str(tmp_path / "t")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| imageidc | 50 | ResNetAP-10 |" in out.stdout and "60.5 ± 0.5 (60.2 ± 1.2, +0.3)" in out.stdout
    assert os.path.isfile(tmp_path / "t" / "tables_best.md") and os.path.isfile(tmp_path / "t" / "tables_best.csv")
    bad = subprocess.run([sys.executable, "scripts/tables.py", str(tmp_path / "none")], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: results path not found") and "Traceback" not in \
        bad.stderr
