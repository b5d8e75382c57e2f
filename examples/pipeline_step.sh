#!/bin/bash
# Stand-ins for the three steps of the pipeline example, for the fake SLURM:
#   pipeline_step.sh train NAME LR      logs a checkpoint per step
#   pipeline_step.sh convert NAME CKPT  converts the checkpoint it is given
#   pipeline_step.sh eval NAME DIR      evaluates the converted model, logs a score
# Each ends with the termination string the config names.
set -eu
mkdir -p demo-work
case $1 in
  train)
    for step in 1 2 3; do
      sleep 0.3
      echo "[$2] step $step/3 lr=$3"
      echo "saved checkpoint to demo-work/$2-step$step.pt"
    done ;;
  convert)
    sleep 0.3
    echo "converting $3"
    echo "converted to demo-work/$2-hf" ;;
  eval)
    sleep 0.3
    echo "evaluating $3"
    echo "eval score 0.$(printf '%s' "$2" | cksum | cut -c1-3)" ;;
esac
echo "STEP DONE"
