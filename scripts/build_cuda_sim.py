"""Build the CUDA host harness (issue 15): csrc/cuda/*.cu compiled as host C++ with
csrc/include/gankern/cuda_sim.h, plus csrc/bindings.cpp and the CPU kernels it binds, into
gankern/_cuda_sim/_C<ext>, the module behind the test-only backend impl="cuda_sim".

Never part of a user build (setup.py does not know it). Incremental via ninja.
Usage: python scripts/build_cuda_sim.py [--sanitize address|thread] [--root DIR] [--build-dir DIR]
  --root       the source tree to build (default: this checkout); the module lands in its gankern/
  --sanitize   instrument everything for ASan or TSan (scripts/sanitize_cuda_sim.sh uses this)
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig


def ninja_file(root: str, build_dir: str, sanitize: str | None) -> tuple[str, str]:
    import pybind11

    cxx = os.environ.get("CXX", "c++")
    out = os.path.join(root, "gankern", "_cuda_sim", "_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    flags = ["-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas",
             "-Wno-unused-function", "-DGANKERN_WITH_CUDA=1", "-DGANKERN_CUDA_SIM=1",
             f"-I{os.path.join(root, 'csrc', 'sim')}", f"-I{os.path.join(root, 'csrc', 'include')}",
             f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]
    ldflags = ["-shared", "-pthread"]
    # The sanitizer instruments only the CUDA sources (what it is there to check); the bindings
    # and the CPU kernels they also bind compile plainly, which halves the build.
    # They never run in the sanitizer runs (no cuda_sim test calls a CPU kernel), so -O0, and
    # the ASan and TSan builds share them through one build directory.
    cuflags = list(flags)
    if sanitize:
        cuflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-O1", "-g1"]
        flags += ["-O0"]
        ldflags.append(f"-fsanitize={sanitize}")
    else:
        cuflags.append("-O2")
        flags.append("-O2")
    cpp = [os.path.join(root, "csrc", "bindings.cpp")] + sorted(glob.glob(os.path.join(root, "csrc", "cpu", "*.cpp")))
    cu = sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")))
    lines = ["ninja_required_version = 1.3", f"cxx = {cxx}", f"flags = {' '.join(flags)}",
             f"cuflags = {' '.join(cuflags)}",
             f"ldflags = {' '.join(ldflags)}",
             "rule cxx", "  command = $cxx -MMD -MF $out.d $flags -c $in -o $out", "  depfile = $out.d", "  deps = gcc",
             # .cu sources are C++ to the host compiler; the harness header stands in for CUDA.
             "rule cu", "  command = $cxx -MMD -MF $out.d -x c++ $cuflags -c $in -o $out", "  depfile = $out.d",
             "  deps = gcc",
             "rule link", "  command = $cxx $in $ldflags -o $out"]
    objs = []
    for src in cpp + cu:
        variant = f".{sanitize}" if sanitize and src.endswith(".cu") else ""
        obj = os.path.join(build_dir, os.path.relpath(src, root).replace(os.sep, "_") + variant + ".o")
        objs.append(obj)
        lines.append(f"build {obj}: {'cu' if src.endswith('.cu') else 'cxx'} {src}")
    lines.append(f"build {out}: link {' '.join(objs)}")
    path = os.path.join(build_dir, f"build_{sanitize or 'plain'}.ninja")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, out


def main(argv=None) -> int:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=here)
    ap.add_argument("--build-dir", default=None)
    ap.add_argument("--sanitize", choices=("address", "thread"), default=None)
    args = ap.parse_args(argv)
    root = os.path.abspath(args.root)
    if args.sanitize and os.path.exists(os.path.join(root, ".git")):
        # A sanitized module in a working tree kills every process that imports it without the
        # sanitizer runtime preloaded (any pytest run there): build in a copy, as
        # scripts/sanitize_cuda_sim.sh does.
        sys.exit(f"refusing a --sanitize build inside the git checkout {root}: use --root on a copy")
    build_dir = os.path.abspath(args.build_dir or os.path.join(root, "build", "cuda_sim_san" if args.sanitize else "cuda_sim"))
    os.makedirs(build_dir, exist_ok=True)
    path, out = ninja_file(root, build_dir, args.sanitize)
    try:
        import ninja

        exe = os.path.join(ninja.BIN_DIR, "ninja")
    except ImportError:
        exe = shutil.which("ninja") or sys.exit("ninja is required: pip install ninja")
    jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
    subprocess.check_call([exe, "-f", path, "-j", jobs], cwd=build_dir,
                          stdout=None if os.environ.get("GANKERN_SIM_VERBOSE") else subprocess.DEVNULL)
    print(f"gankern: CUDA host harness built: {os.path.relpath(out, root)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
