"""The capacity core: decisions both hosts share (admission and quotas, the fair queue, warm kernels,
idle rules), over small declared host protocols that direct mode and hub mode each implement."""
