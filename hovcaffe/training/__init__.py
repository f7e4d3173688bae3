"""Training a net with Caffe's solver loop: the room between the solvers (`hovcaffe.solver`) and
the launchers (`hovcaffe.commands.train`, `hovcaffe.distributed`).

- `loop`: `Trainer` (Caffe's `Solver::Solve` / `Step` / `TestAll`) and `TrainConfig`; the one owner
  of training state (`Trainer.state_dict()` / `load_state_dict()`);
- `hooks`: the seams - `TrainHooks` (what a rank runtime plugs in), `TrainCallback` (observers);
- `nets`: the train/test NetParameters and NetStates a SolverParameter describes;
- `feeder`: the data feeds of one net (data layers, source overrides, .npz for Input blobs);
- `scoring`: test passes (Caffe's mean of each output, and the sample-exact one ranks use);
- `signals`: SIGINT/SIGTERM/SIGHUP as requests polled by the loop;
- `checkpoints`: snapshot names (one rule), their crash-safe write, finding and resuming one.
"""
