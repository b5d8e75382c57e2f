"""What a cycle costs, counted: SLURM calls, log bytes read, state bytes written (SPEC 9).

Times and memory are shown by bench/scale.py; the counts here are exact and do not depend on
the machine, so they are tested."""
import os

import autoexp
from helpers import FakeClock, ScriptedSlurm, _Sink, write_config


def sweep_config(project, seeds):
    return {
        "project": project,
        "sweep": {"seed": list(range(seeds))},
        "job": {"name": "{project}-s{seed}", "command": "echo {seed}", "log": "logs/{name}-%j.log"},
        "monitoring": {"interval_seconds": 60, "termination_string": "TRAINING FINISHED"},
        "restart": {"crash": {"action": "restart", "max_attempts": 2}},
    }


class Sweeps(object):
    """Several sessions of one state folder, one SLURM, one controller: what `monitor --all`
    and a cron `reconcile` run."""

    def __init__(self, tmp_path, sessions, per):
        self.clock = FakeClock()
        self.slurm = ScriptedSlurm(self.clock)
        self.state_dir = str(tmp_path / "state")
        self.store = autoexp.StateStore(self.state_dir)
        self.store.ensure()
        self.out = []
        self.ctl = autoexp.Controller(self.store, self.slurm, autoexp.Reporter(0, _Sink(self.out), _Sink(self.out)),
                                      clock=self.clock, sleep=self.clock.sleep)
        self.sessions, self.plans = [], []
        for k in range(sessions):
            work = tmp_path / ("w%d" % k)
            work.mkdir()
            cfg = write_config(str(work / "cfg.json"), sweep_config("p%d" % k, per))
            resolved = autoexp.resolve_config(autoexp.load_config_file(cfg), cfg, [])
            manifest, scripts = autoexp.build_plan(resolved, cfg, "b%d" % k, self.state_dir, str(work), self.clock())
            plan = autoexp.load_manifest(autoexp.write_plan(manifest, scripts))
            s = self.store.create_session(plan, self.clock())
            self.ctl.register(s, plan.jobs, False)
            self.sessions.append(s)
            self.plans.append(plan)
        self.cycle()  # submits every job

    def jobs(self):
        return [j for s in self.sessions for j in s.jobs]

    def cycle(self):
        self.clock.now += 60
        before = len(self.slurm.calls)
        self.ctl.cycle(self.sessions)
        calls = [c[0] for c in self.slurm.calls[before:]]
        return dict((c, calls.count(c)) for c in set(calls))

    def log(self, job, text):
        plan = [p for p in self.plans if job.name in p.by_name][0]
        jid = job.current.job_id
        path = autoexp.resolve_log_path(plan.by_name[job.name].log_template, jid, jid, job.name, self.slurm.user)
        with open(path, "a") as f:
            f.write(text)

    def written(self):
        return sum(os.path.getsize(os.path.join(self.state_dir, n)) for n in os.listdir(self.state_dir)
                   if os.path.isfile(os.path.join(self.state_dir, n)))


def test_a_cycle_over_many_sessions_asks_squeue_once_and_sacct_only_for_jobs_gone(tmp_path):
    sw = Sweeps(tmp_path, 3, 60)
    assert sw.slurm.count("sbatch") == 180
    for job in sw.jobs():
        sw.slurm.set(job.current.job_id, "RUNNING")
    assert sw.cycle() == {"squeue": 1}
    assert sw.cycle() == {"squeue": 1}
    # a job of each session ends and leaves squeue: one sacct by name answers all three
    for s in sw.sessions:
        jid = s.jobs[0].current.job_id
        sw.log(s.jobs[0], "TRAINING FINISHED\n")
        sw.slurm.set(jid, "COMPLETED")
        sw.slurm.purge(jid)
    assert sw.cycle() == {"squeue": 1, "sacct": 1}
    assert [s.jobs[0].current.outcome for s in sw.sessions] == ["success"] * 3
    assert sw.cycle() == {"squeue": 1}


def test_every_job_leaving_squeue_at_once_costs_one_sacct(tmp_path):
    sw = Sweeps(tmp_path, 4, 50)
    for job in sw.jobs():
        sw.slurm.set(job.current.job_id, "RUNNING")
    sw.cycle()
    for job in sw.jobs():  # e.g. a maintenance reservation ended them all
        sw.slurm.set(job.current.job_id, "COMPLETED")
        sw.slurm.purge(job.current.job_id)
        sw.log(job, "TRAINING FINISHED\n")
    assert sw.cycle() == {"squeue": 1, "sacct": 1}
    assert set(j.current.outcome for j in sw.jobs()) == {"success"}


def test_log_bytes_read_are_the_bytes_appended_and_an_idle_cycle_reads_none(tmp_path, monkeypatch):
    tally = [0]
    real = autoexp.open_log

    class Counting(object):
        def __init__(self, f):
            self.f = f

        def read(self, k=-1):
            data = self.f.read(k)
            tally[0] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def counting(path):
        f, st = real(path)
        return Counting(f), st
    monkeypatch.setattr(autoexp, "open_log", counting)
    sw = Sweeps(tmp_path, 2, 40)
    for job in sw.jobs():
        sw.slurm.set(job.current.job_id, "RUNNING")
        sw.log(job, "epoch 0\n")
    sw.cycle()
    for i in range(1, 4):
        appended = 0
        for job in sw.jobs():
            line = "step %d loss=0.25\r" % i * (i + 1)  # progress bars: no newline at all
            sw.log(job, line)
            appended += len(line)
        before = tally[0]
        sw.cycle()
        assert tally[0] - before == appended
    before = tally[0]
    assert sw.cycle() == {"squeue": 1}
    assert tally[0] == before


def test_an_idle_cycle_writes_nothing_and_one_ending_job_writes_a_small_batch(tmp_path):
    sw = Sweeps(tmp_path, 2, 100)
    for job in sw.jobs():
        sw.slurm.set(job.current.job_id, "RUNNING")
    sw.cycle()
    sw.cycle()
    size = sw.written()
    for _ in range(3):
        sw.cycle()
    assert sw.written() == size
    job = sw.sessions[0].jobs[5]
    sw.log(job, "TRAINING FINISHED\n")
    sw.slurm.set(job.current.job_id, "COMPLETED")
    sw.cycle()
    grown = sw.written() - size
    # the job's line twice at most (its decision, then its payload marks) and the events
    assert 0 < grown <= 2 * (len(job.line()) + 1) + 4096
