"""flood sweep: settings x seeds on an Optuna study, run by worker processes.

A sweep is a folder::

    <out>/<name>/
      sweep.yaml      what is swept: the base config, the grid or search, the seeds, the storage
      study.journal   Optuna's journal storage (default; or a database given by --storage)
      runs/           ordinary run folders, one per setting and seed: `flood compare` reads them
      workers/        each worker process's log
      results.md      the grouped table, written at the end (and by `flood sweep --report`)
      b-curve.png     best validation loss and accuracy against b (ascent_lr-curve.png likewise)

A grid is enumerated up front: every (setting, seed) is one Optuna trial, enqueued as
WAITING, and a worker claims one by moving it to RUNNING through the storage, which
lets exactly one claimant win (a row lock in a database, the order of the journal's
log in a file). Optuna's GridSampler is not used: it can hand one grid point to two
concurrent workers. A search (--search) asks Optuna's TPE sampler for settings, each
trial running every seed and reporting their mean; its baseline runs are a grid of
their own in a second study.

A worker owns its run by a lease: the claimed trial, renewed by a heartbeat, and the run
folder's lock. A RUNNING trial whose worker is gone (its process no longer exists on
this host, or its heartbeat was seen unchanged for the grace period by the observer's
own clock) is failed and enqueued again with the same run; the new claimant resumes the
run folder from its checkpoint, as `flood train --resume` does, once the folder's lock is
let go. A worker that finds its lease taken, or could not renew it for half the grace
period, stops before its next write (:class:`Heartbeat`). A completed run is never run
again.

The runs of sweep.yaml are the truth and trials are claims on them: a run's outcome is
its latest trial's, and :func:`reconcile` (run by --resume and by every worker when it
starts) queues again any run that has no completed result and no live owner, so that a
crash between two writes of the queue never loses a run.

Modules, each importing only those named before it: spec (what is swept, sweep.yaml's
record), storage (the Optuna storage), lease (a worker's hold on its trial), queue
(claims and reconcile), create (making, extending and reading a sweep), worker (the
work loop), driver (the sweep's own process).
"""
