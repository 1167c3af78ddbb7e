"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd of Debian's `munge` / `slurm-wlm`,
started in the foreground from a generated slurm.conf (this host, its cores, select/cons_tres, proctrack/linuxproc,
state, spool, logs and the munge socket under one folder, free ports), stopped by pid. Needs root (slurmd runs jobs
as their user) and the binaries; `missing()` says what is absent, so the tests can skip with that reason.

    python tests/slurm_cluster.py DIR      # start one by hand; prints `export SLURM_CONF=...`, Ctrl-C or kill stops it
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")


def _which(name):
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)


def missing():
    """Why a cluster cannot start here, or None."""
    absent = [n for n in DAEMONS + CLIENTS if not _which(n)]
    if absent:
        return (f"SLURM binaries missing ({', '.join(absent)}): apt-get install -y slurm-wlm munge (.ci/run does "
                f"this in CI)")
    if os.geteuid() != 0:
        return "a test SLURM cluster needs root (slurmd runs jobs as their user)"
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Cluster:
    """start() -> env (SLURM_CONF set) for the clients; stop() ends what start() started, by pid."""

    def __init__(self, root, cpus=None):
        self.root = os.path.abspath(root)
        self.cpus = cpus or os.cpu_count()
        self.procs = []
        self.host = socket.gethostname().split(".")[0]
        self.conf = os.path.join(self.root, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)

    def _write_conf(self):
        r = self.root
        for d in ("state", "spool", "munge"):
            os.makedirs(os.path.join(r, d), mode=0o700, exist_ok=True)
        with open(os.path.join(r, "munge", "munge.key"), "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(os.path.join(r, "munge", "munge.key"), 0o400)
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 ** 20
        lines = [
            "ClusterName=mmxtest", f"SlurmctldHost={self.host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={r}/munge/munge.socket,cred_expire=10",  # a requeued job waits cred_expire + 1 s, not 2 min
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/slurmctld.log", f"SlurmdLogFile={r}/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2", "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "SlurmdParameters=config_overrides", "KillWait=20", "MinJobAge=600",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _spawn(self, name, args):
        log = open(os.path.join(self.root, f"{name}.out"), "ab")
        p = subprocess.Popen([_which(name)] + args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def start(self, timeout=60):
        self._write_conf()
        m = os.path.join(self.root, "munge")
        self._spawn("munged", ["-F", "-f", f"--socket={m}/munge.socket", f"--key-file={m}/munge.key",
                               f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                               f"--seed-file={m}/munged.seed"])
        self._wait(lambda: os.path.exists(f"{m}/munge.socket"), 10, "munged")
        self._spawn("slurmctld", ["-D", "-i", "-f", self.conf])
        self._spawn("slurmd", ["-D", "-N", self.host, "-f", self.conf])
        self._wait(self._idle, timeout, "the node to become idle")
        return self.env

    def _idle(self):
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def _wait(self, ok, timeout, what):
        end = time.time() + timeout
        while time.time() < end:
            for p in self.procs:
                if p.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{os.path.basename(p.args[0])} exited with {p.returncode}; see {self.root}")
            if ok():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"timed out waiting for {what}; see the logs in {self.root}")

    def stop(self):
        for p in reversed(self.procs):  # slurmd, slurmctld, munged: each by its own pid
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []


if __name__ == "__main__":
    if missing():
        sys.exit(missing())
    c = Cluster(sys.argv[1] if len(sys.argv) > 1 else "slurm_test_cluster")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill PID stops the daemons too
    c.start()
    print(f"export SLURM_CONF={c.conf}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
