"""cleanil: single-file imitation learning and inverse RL."""

import os
import sys

# MuJoCo picks its OpenGL backend when it is first imported: on a Linux machine without a display, render
# offscreen through EGL (videos, scripts/gallery.py) unless the user chose a backend; pygame (classic control)
# draws into memory without opening a window or a sound device.
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
