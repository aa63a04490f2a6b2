"""Build gankern._C: torch-free C++ (always) and CUDA (torch with CUDA, or GANKERN_BUILD_CUDA=1) kernels.

Why a hand-written ninja build instead of torch.utils.cpp_extension: csrc/ is torch-free
(DESIGN.md §1), so the extension links neither libtorch nor a CUDA build of torch. That lets
nvcc compile and link the CUDA kernels on a machine with a CPU-only torch and no GPU, so every
build proves the CUDA code compiles, and one binary works across torch versions.

Environment:
  GANKERN_SKIP_NATIVE=1     build nothing native; the package runs on Triton and the reference
  GANKERN_SKIP_CUDA=1       build the C++ CPU kernels only, even when nvcc exists
  GANKERN_BUILD_CUDA=1      compile the CUDA kernels even though torch is a CPU-only build (CI
                            sets it, so every CI run proves the CUDA code compiles and links);
                            without it nvcc runs only when the installed torch has CUDA, because
                            nvcc is most of a build's time (~130 s of ~3 min on 2 cores)
  TORCH_CUDA_ARCH_LIST      e.g. "8.0;9.0" (the default) or "9.0a"; "+PTX" adds PTX for that arch
  GANKERN_PTX=0             no PTX of the newest arch (by default it is embedded for newer GPUs)
  CUDA_HOME / CUDA_PATH     where CUDA lives (else found from nvcc on PATH)
  GANKERN_BUILD_TEMP        object directory (lets parallel builds keep out of each other's way)
  MAX_JOBS                  ninja parallelism
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0"


def _is_cuda_home(path):
    return bool(path) and os.path.exists(os.path.join(path, "include", "cuda_runtime.h"))


def _torch_has_cuda():
    """torch.version.cuda of the installed torch, read without importing torch (seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    path = os.path.join(list(spec.submodule_search_locations)[0], "version.py")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return False
    found = re.search(r"^cuda\b[^=\n]*=\s*(.+)$", text, re.M)
    return bool(found) and found.group(1).strip() not in ("None", "''", '""')


def _find_cuda_home():
    if os.environ.get("GANKERN_SKIP_CUDA") == "1":
        return None
    if os.environ.get("GANKERN_BUILD_CUDA") != "1" and not _torch_has_cuda():
        return None
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_cuda_home(os.environ.get(var)):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if _is_cuda_home(home):
            return home
        # nvcc may be a wrapper script; nvcc itself knows where its toolkit lives.
        dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull],
                             capture_output=True, text=True)
        top = re.search(r"TOP=(\S+)", dry.stdout + dry.stderr)
        if top and _is_cuda_home(os.path.normpath(top.group(1))):
            return os.path.normpath(top.group(1))
    return "/usr/local/cuda" if _is_cuda_home("/usr/local/cuda") else None


def _gencode_flags():
    """nvcc -gencode flags, and what they put in the fatbin: (flags, sass archs, ptx archs).

    SASS for every listed arch; PTX of the newest one too (GANKERN_PTX=0 leaves it out), so a
    GPU newer than every SASS (sm_100, sm_120) JIT-compiles the kernels instead of having none.
    """
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS
    flags, sass, ptx_archs = [], [], []
    items = [a for a in archs.replace(",", ";").replace(" ", ";").split(";") if a]
    for i, arch in enumerate(items):
        ptx = arch.endswith("+PTX")
        arch = arch.replace("+PTX", "")
        num = arch.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        sass.append(num)
        if ptx or i == len(items) - 1 and os.environ.get("GANKERN_PTX", "1") != "0":
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
            ptx_archs.append(num)
    return flags, sass, ptx_archs


def _cudart_static(cuda_home):
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        path = os.path.join(cuda_home, sub, "libcudart_static.a")
        if os.path.exists(path):
            return path
    raise RuntimeError(f"libcudart_static.a not found under {cuda_home}")


class NinjaBuild(build_ext):
    """Compiles csrc/**/*.cpp with the host C++ compiler and csrc/cuda/*.cu with nvcc via ninja."""

    def build_extension(self, ext):
        import pybind11

        cuda_home = _find_cuda_home()
        # A fixed object directory keeps rebuilds incremental (pip gives each build a fresh temp).
        temp = os.path.abspath(os.environ.get("GANKERN_BUILD_TEMP") or os.path.join(ROOT, "build", "native"))
        os.makedirs(temp, exist_ok=True)
        out = os.path.abspath(self.get_ext_fullpath(ext.name))
        os.makedirs(os.path.dirname(out), exist_ok=True)

        cxx = os.environ.get("CXX", "c++")
        py_inc = sysconfig.get_paths()["include"]
        includes = [f"-I{os.path.join(ROOT, 'csrc', 'include')}", f"-I{py_inc}", f"-I{pybind11.get_include()}"]
        defines = ["-DGANKERN_WITH_CUDA=1"] if cuda_home else []
        cxxflags = ["-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
        cxxflags += os.environ.get("GANKERN_CXXFLAGS", "").split()
        ldflags = ["-shared"] + os.environ.get("GANKERN_LDFLAGS", "").split()

        cpp = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cpp"), recursive=True))
        cu = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))) if cuda_home else []
        # OpenMP threads the CPU kernels when the compiler has it (gcc and clang with libomp do).
        omp = ["-fopenmp"] if self._compiler_has_openmp(cxx, temp) else []

        lines = [
            "ninja_required_version = 1.3",
            f"cxx = {cxx}",
            f"cxxflags = {' '.join(cxxflags + omp + defines + includes)}",
            "rule cxx",
            "  command = $cxx -MMD -MF $out.d $cxxflags -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
        ]
        objs = [self._obj(temp, f) for f in cpp]
        link_extra = list(omp)
        if cu:
            nvcc = os.path.join(cuda_home, "bin", "nvcc")
            nvcc = nvcc if os.path.exists(nvcc) else shutil.which("nvcc")
            # IEEE math, as the CPU and Triton backends: no --use_fast_math (it made tanh the
            # ~2^-11 hardware approximation, expf the fast exp, and flushed denormals to zero).
            # The IEEE settings are nvcc's defaults, spelled out so no flag can slip them back;
            # fmad stays on (one rounding per a*b+c, as Triton's default FP fusion). -lineinfo
            # only adds line tables for profilers and compute-sanitizer, no code change.
            gencode, sass, ptx = _gencode_flags()
            nvflags = ["-O3", "-std=c++17", "-ftz=false", "-prec-div=true", "-prec-sqrt=true", "-fmad=true",
                       "-lineinfo", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                       "--expt-relaxed-constexpr"]
            nvflags += gencode + defines + [f"-I{os.path.join(ROOT, 'csrc', 'include')}",
                                            f"-DGANKERN_CUDA_SASS=\\\"{','.join(sass)}\\\"",
                                            f"-DGANKERN_CUDA_PTX=\\\"{','.join(ptx)}\\\""]
            lines += [
                f"nvcc = {nvcc}",
                f"nvflags = {' '.join(nvflags)}",
                "rule nvcc",
                "  command = $nvcc -MD -MF $out.d $nvflags -c $in -o $out",
                "  depfile = $out.d",
                "  deps = gcc",
            ]
            objs += [self._obj(temp, f) for f in cu]
            link_extra += [_cudart_static(cuda_home), "-ldl", "-lrt", "-lpthread"]
        lines += [
            f"ldflags = {' '.join(ldflags)}",
            f"libs = {' '.join(link_extra)}",
            "rule link",
            "  command = $cxx $in $ldflags $libs -o $out",
        ]
        for src in cpp:
            lines.append(f"build {self._esc(self._obj(temp, src))}: cxx {self._esc(src)}")
        for src in cu:
            lines.append(f"build {self._esc(self._obj(temp, src))}: nvcc {self._esc(src)}")
        tmp_out = os.path.join(temp, os.path.basename(out))
        lines.append(f"build {self._esc(tmp_out)}: link {' '.join(self._esc(o) for o in objs)}")
        ninja_file = os.path.join(temp, "build.ninja")
        with open(ninja_file, "w") as f:
            f.write("\n".join(lines) + "\n")

        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        print(f"gankern: building {len(cpp)} C++ and {len(cu)} CUDA sources "
              f"({'CUDA ' + cuda_home if cuda_home else 'CPU kernels only: no CUDA torch or nvcc; GANKERN_BUILD_CUDA=1 adds CUDA'})",
              flush=True)
        subprocess.check_call([self._ninja(), "-f", ninja_file, "-j", jobs], cwd=temp)
        # Atomic replace: a running process keeps the old inode instead of crashing on a rewrite.
        staged = out + ".tmp"
        shutil.copyfile(tmp_out, staged)
        os.replace(staged, out)

    def copy_extensions_to_source(self):
        # setuptools clears self.inplace while building and copies afterwards; copy atomically
        # so a process that already loaded the old _C keeps its inode instead of crashing.
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            dest, built = self._get_inplace_equivalent(build_py, ext)
            if os.path.abspath(built) == os.path.abspath(dest):
                continue
            staged = dest + ".tmp"
            shutil.copyfile(built, staged)
            os.chmod(staged, 0o755)
            os.replace(staged, dest)
            print(f"gankern: {os.path.relpath(dest, ROOT)} updated", flush=True)

    @staticmethod
    def _obj(temp, src):
        rel = os.path.relpath(src, ROOT).replace(os.sep, "_")
        return os.path.join(temp, rel + ".o")

    @staticmethod
    def _esc(path):
        return path.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")

    @staticmethod
    def _ninja():
        try:
            import ninja

            return os.path.join(ninja.BIN_DIR, "ninja")
        except ImportError:
            found = shutil.which("ninja")
            if not found:
                raise RuntimeError("ninja is required to build gankern._C: pip install ninja")
            return found

    @staticmethod
    def _compiler_has_openmp(cxx, temp):
        probe = os.path.join(temp, "omp_probe.cpp")
        with open(probe, "w") as f:
            f.write("#include <omp.h>\nint main(){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        result = subprocess.run([cxx, "-fopenmp", probe, "-o", probe + ".out"], capture_output=True)
        return result.returncode == 0


ext_modules = [] if os.environ.get("GANKERN_SKIP_NATIVE") == "1" else [Extension("gankern._C", sources=[])]

setup(ext_modules=ext_modules, cmdclass={"build_ext": NinjaBuild})
if __name__ == "__main__" and not ext_modules:
    print("gankern: GANKERN_SKIP_NATIVE=1, no native extension built", file=sys.stderr)
