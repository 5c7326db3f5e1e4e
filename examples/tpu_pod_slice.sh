#!/usr/bin/env bash
# Serve LLaVA on every host of a Cloud TPU pod slice: one mmjax process per host, one mesh over all chips.
#
#   TPU=my-v5p-64 ZONE=us-east5-a CKPT=/mnt/ckpt/llava-1.5-7b-hf bash examples/tpu_pod_slice.sh
#
# Each host must see the checkpoint at $CKPT (a shared disk, or the same copy on every host) and the
# image at $IMAGE. `--distributed` calls jax.distributed.initialize(), which on Cloud TPU finds the
# coordinator and this host's process id by itself; `--mesh auto` puts as many chips on "model" as the
# KV heads allow and the rest on "data" (see docs/sharding.md). Only process 0 prints.
# Off Cloud TPU (GPU hosts), pass the coordinates yourself on host i:
#   python -m mmjax generate --distributed --coordinator 10.0.0.1:1234 --num-processes 4 --process-id i ...
set -euo pipefail
: "${TPU:?set TPU to the pod slice name}" "${ZONE:?set ZONE}" "${CKPT:?set CKPT to the checkpoint directory}"
IMAGE=${IMAGE:-/mnt/ckpt/example.jpg}
MESH=${MESH:-auto}  # or e.g. data=4,model=8

cd "$(dirname "$0")/.."  # this checkout is copied to every host
gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all . "$TPU":~/mmjax
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  python3 -m venv ~/mmjax-venv && ~/mmjax-venv/bin/pip install -q -e \"\$HOME/mmjax[tpu]\"
  ~/mmjax-venv/bin/python -m mmjax generate --distributed --mesh '$MESH' --dtype bfloat16 \
    --model '$CKPT' --image '$IMAGE' --prompt 'USER: <image>\nWhat is in this picture? ASSISTANT:' --max-tokens 64
"
