# Sourced: puts cuDNN (the CUDA backend opens libcudnn.so.9 at run time for a
# prompt's attention at medium precision) on LD_LIBRARY_PATH from the Python
# environment's nvidia-cudnn wheel (PyTorch's) where the system's loader has
# none. Without either, the backend runs its own attention kernel.
if ! ldconfig -p 2>/dev/null | grep -q 'libcudnn.so.9 '; then
  cudnn_lib="$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(nvidia.cudnn.__path__[0], "lib"))' 2>/dev/null || true)"
  [ -z "$cudnn_lib" ] || export LD_LIBRARY_PATH="$cudnn_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  unset cudnn_lib
fi
