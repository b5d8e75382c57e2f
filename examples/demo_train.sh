#!/bin/bash
# A stand-in for a training run, for the demo on the fake SLURM: it resumes from its
# checkpoint, logs one line per step and prints the termination string when it is done.
#   demo_train.sh NAME STEPS [SECONDS_PER_STEP]
name=$1
total=$2
pace=${3:-0.2}
ckpt="demo-work/$name.ckpt"
mkdir -p demo-work
step=$(cat "$ckpt" 2>/dev/null || echo 0)
echo "[$name] SLURM job ${SLURM_JOB_ID:-?}: starting at step $step of $total"
while [ "$step" -lt "$total" ]; do
    sleep "$pace"
    step=$((step + 1))
    echo "$step" > "$ckpt"
    echo "[$name] step $step/$total"
done
echo "TRAINING FINISHED"
