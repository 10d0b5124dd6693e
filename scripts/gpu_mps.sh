# Sourced by the GPU scripts: show the GPU, then turn MPS on so that the runs' small kernels share
# the GPU instead of taking turns; optional, and switched off again unless a CUDA context opens through it.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if nvidia-cuda-mps-control -d 2>/dev/null; then
    if timeout 60 python3 -c "import torch; torch.zeros(1, device='cuda').sum().item()"; then echo "MPS on"
    else echo quit | nvidia-cuda-mps-control; echo "MPS failed; off"; fi
else echo "MPS off"; fi
