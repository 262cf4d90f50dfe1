"""Building archc's onnxruntime custom-op library (archc.GatedMLP, GatedMLPNBits, Linear, LinearNBits: gated_mlp.cc,
gated_mlp_cuda.cu).

    python3 -m exporters.ort_ops.build --cuda -o out/archc_ort_ops.so   # nvcc: CPU + CUDA kernels
    python3 -m exporters.ort_ops.build --cpu -o out/archc_ort_ops_cpu.so  # g++: the CPU kernel alone

Build-time needs only: g++ (CPU) or nvcc (CUDA; cuBLAS is found in the process at run time, so no cuBLAS
headers or libraries), and onnxruntime's C/C++ API headers, which no PyPI package ships. They come from
Debian's libonnxruntime-dev 1.23.2 (C API version 23; onnxruntime accepts libraries built against an older
API version): downloaded once from the pinned URL, checked against its sha256, unpacked (ar + tar, in Python)
into ~/.cache/archc/ (ARCHC_CACHE_DIR, else XDG_CACHE_HOME, moves it). Their text never enters this repository.

Overrides, for machines without a network or a compiler (the GPU machine gets a library built elsewhere):
- ARCHC_ORT_INCLUDE: a folder holding onnxruntime_cxx_api.h and friends (used instead of the download);
- ARCHC_NVCC: the nvcc to build with (default: the one on PATH, else CUDA_HOME/bin, else /usr/local/cuda/bin);
- ARCHC_ORT_OPS_LIB: a library built already; `library()` checks it (ours, and with CUDA where asked) and
  returns it instead of building.

Builds are cached under the cache folder by a hash of the sources, flags and compiler version; the same inputs
give the same file (no timestamps in it), so a compiled model's copy only changes when the library does.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from enum import Enum
from pathlib import Path

from archc.errors import UserError
from archc.model_dir import ORT_OPS_FILE

HERE = Path(__file__).resolve().parent
SOURCES_CPU = ("gated_mlp.cc",)
SOURCES_CUDA = ("gated_mlp.cc", "gated_mlp_cuda.cu", "gated_mlp_cuda.h")

HEADERS_DEB_URL = "http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.23.2+dfsg-6.1_amd64.deb"
HEADERS_DEB_SHA256 = "4630a94adb36dc056feb124e51c6e952e2cab5188bc093a25bee8a7e1ac5196d"
HEADERS_NAME = "onnxruntime-dev-1.23.2"  # the cache folder: include/onnxruntime/*.h below it
HEADERS_MEMBER = "./usr/include/onnxruntime/"

# The ops this source defines (archc_ort_ops_info's ops=, version 2): a prebuilt library lacking one is refused.
OPS = ("GatedMLP", "GatedMLPNBits", "Linear", "LinearNBits")
LIBRARY_FILE = ORT_OPS_FILE  # its name inside a compiled model folder (and in the build cache)
ENV_INCLUDE = "ARCHC_ORT_INCLUDE"
ENV_LIB = "ARCHC_ORT_OPS_LIB"
ENV_NVCC = "ARCHC_NVCC"  # the nvcc to use (default: PATH, CUDA_HOME/bin, /usr/local/cuda/bin)

# Real GPUs the CUDA build carries machine code for (A100, L4/L40, H100/H200, B200), plus sm_90's PTX for
# newer ones to JIT. Each costs a few seconds of nvcc.
CUDA_ARCHS = ("80", "89", "90", "100")


class Kind(str, Enum):
    """Which kernels a build holds."""

    cpu = "cpu"  # g++: the CPU kernel only (CI proves the op's semantics with it)
    cuda = "cuda"  # nvcc: the CPU kernel and the CUDA kernel (what a --kernels archc model carries)


def cache_dir() -> Path:
    base = os.environ.get("ARCHC_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "archc"


# ------------------------------------------------------------------------------------------------
# onnxruntime's headers


def headers() -> Path:
    """The folder holding onnxruntime_cxx_api.h: ARCHC_ORT_INCLUDE, else the cached Debian package (fetched once)."""
    given = os.environ.get(ENV_INCLUDE)
    if given:
        if not (Path(given) / "onnxruntime_cxx_api.h").is_file():
            raise UserError(f"{ENV_INCLUDE}={given}: no onnxruntime_cxx_api.h there; point it at the folder "
                            f"holding onnxruntime's C/C++ API headers (version 1.23 or newer), or unset it")
        return Path(given)
    root = cache_dir() / HEADERS_NAME
    inc = root / "include" / "onnxruntime"
    if (inc / "onnxruntime_cxx_api.h").is_file():
        return inc
    try:
        with urllib.request.urlopen(HEADERS_DEB_URL, timeout=60) as r:
            deb = r.read()
    except OSError as e:
        raise UserError(f"cannot download onnxruntime's headers ({HEADERS_DEB_URL}: {e}); on a machine without "
                        f"network set {ENV_INCLUDE} to a copy of them, or {ENV_LIB} to a library built elsewhere") from None
    got = hashlib.sha256(deb).hexdigest()
    if got != HEADERS_DEB_SHA256:
        raise UserError(f"{HEADERS_DEB_URL}: sha256 {got}, expected {HEADERS_DEB_SHA256}; not unpacked "
                        f"(set {ENV_INCLUDE} to headers you trust)")
    _unpack_headers(deb, root)
    return inc


def _unpack_headers(deb: bytes, root: Path) -> None:
    """usr/include/onnxruntime/ of the .deb (an `ar` archive holding data.tar.*) into root/include/onnxruntime/,
    atomically (a half-unpacked cache would be taken for a whole one)."""
    data = _ar_member(deb, "data.tar")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".headers-", dir=root.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                if not m.name.startswith(HEADERS_MEMBER) or not m.isfile():
                    continue
                rel = Path("include/onnxruntime") / m.name[len(HEADERS_MEMBER):]
                if ".." in rel.parts:
                    continue
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(tar.extractfile(m).read())
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ar_member(archive: bytes, prefix: str) -> bytes:
    """The first member of a Unix `ar` archive whose name starts with prefix (a .deb holds debian-binary,
    control.tar.*, data.tar.*)."""
    if not archive.startswith(b"!<arch>\n"):
        raise UserError(f"{HEADERS_DEB_URL}: not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(archive):
        head = archive[pos:pos + 60]
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        if name.startswith(prefix):
            return archive[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    raise UserError(f"{HEADERS_DEB_URL}: no {prefix}* inside")


# ------------------------------------------------------------------------------------------------
# Building


def compiler(kind: Kind) -> str:
    """g++ or nvcc on PATH (nvcc also in /usr/local/cuda/bin, or CUDA_HOME/bin); UserError naming the fix."""
    if kind is Kind.cpu:
        found = shutil.which("g++")
        if not found:
            raise UserError("building archc's onnxruntime ops (CPU) needs g++; install it (apt-get install g++)")
        return found
    if kind is Kind.cuda:
        no = (f"--kernels archc needs nvcc (the CUDA toolkit, 12.x or 13.x) to build its CUDA kernel, and {{}}; install it, "
              f"or set {ENV_LIB} to a library built elsewhere with `python3 -m exporters.ort_ops.build --cuda -o FILE`, "
              f"or use --kernels onnxruntime")
        given = os.environ.get(ENV_NVCC)
        if given:
            if not Path(given).is_file():
                raise UserError(no.format(f"{ENV_NVCC}={given} is not a file"))
            return given
        for c in (shutil.which("nvcc"), *(Path(h) / "bin" / "nvcc" for h in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if h)):
            if c and Path(c).is_file():
                return str(c)
        raise UserError(no.format("none is on PATH, in CUDA_HOME/bin or in /usr/local/cuda/bin"))
    raise ValueError(kind)


def command(kind: Kind, cc: str, include: Path, out: Path) -> list[str]:
    if kind is Kind.cpu:
        return [cc, "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-static-libstdc++", "-static-libgcc",
                f"-I{include}", str(HERE / "gated_mlp.cc"), "-o", str(out)]
    if kind is Kind.cuda:
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS] + ["-gencode=arch=compute_90,code=compute_90"]
        return [cc, "-std=c++17", "-O3", "-shared", "-DARCHC_ORT_OPS_CUDA", "-Xcompiler=-fPIC,-fvisibility=hidden",
                "-Xlinker=--exclude-libs,ALL", "-Xcompiler=-static-libstdc++,-static-libgcc", "-cudart=static", *gencode,
                f"-I{include}", str(HERE / "gated_mlp.cc"), str(HERE / "gated_mlp_cuda.cu"), "-o", str(out), "-ldl"]
    raise ValueError(kind)


def build(kind: Kind) -> Path:
    """The library of this kind, built (or found already built) in the cache."""
    cc = compiler(kind)
    include = headers()
    srcs = {Kind.cpu: SOURCES_CPU, Kind.cuda: SOURCES_CUDA}[kind]  # each kind named: a new one is a KeyError, not CUDA's
    h = hashlib.sha256()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"{cc} --version failed ({e}); check the compiler installation") from None
    for part in (kind.value, version, *(HERE / s for s in srcs), *sorted(include.rglob("*.h"))):
        h.update(part.read_bytes() if isinstance(part, Path) else part.encode())
        h.update(b"\0")
    h.update(" ".join(command(kind, "CC", Path("INC"), Path("OUT"))).encode())
    folder = cache_dir() / "ort_ops" / f"{kind.value}-{h.hexdigest()[:16]}"
    lib = folder / LIBRARY_FILE
    if lib.is_file():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{LIBRARY_FILE}.{os.getpid()}"
    proc = subprocess.run(command(kind, cc, include, tmp), capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise UserError(f"building archc's onnxruntime ops with {cc} failed: "
                        f"{lines[0][:300] if lines else 'exit ' + str(proc.returncode)}")
    os.replace(tmp, lib)
    return lib


def info(lib: Path) -> dict[str, str]:
    """What a library says of itself (archc_ort_ops_info:
    'name=archc-ort-ops;version=2;ops=GatedMLP,GatedMLPNBits,Linear,LinearNBits;kernels=cpu,cuda');
    UserError when the file is not one of ours or cannot be loaded here."""
    try:
        h = ctypes.CDLL(str(lib))
        fn = h.archc_ort_ops_info
    except (OSError, AttributeError) as e:
        raise UserError(f"{lib}: not archc's onnxruntime op library ({str(e)[:200]}); build one with "
                        f"`python3 -m exporters.ort_ops.build --cuda -o FILE`") from None
    fn.restype = ctypes.c_char_p
    return dict(kv.split("=", 1) for kv in fn().decode().split(";"))


def library(kind: Kind) -> Path:
    """The library a model of this kind needs: ARCHC_ORT_OPS_LIB when set (checked), else built here."""
    given = os.environ.get(ENV_LIB)
    if not given:
        return build(kind)
    lib = Path(given)
    if not lib.is_file():
        raise UserError(f"{ENV_LIB}={given}: no such file; point it at a library built with "
                        f"`python3 -m exporters.ort_ops.build --{kind.value} -o FILE`, or unset it")
    said = info(lib)
    kernels = said.get("kernels", "").split(",")
    if kind.value not in kernels:
        raise UserError(f"{ENV_LIB}={given}: holds {'/'.join(kernels)} kernels, not {kind.value}; build it with "
                        f"`python3 -m exporters.ort_ops.build --{kind.value} -o FILE`")
    missing = [op for op in OPS if op not in said.get("ops", "").split(",")]
    if missing:  # an older build: a model using these ops would fail when onnxruntime loads it, far from the cause
        raise UserError(f"{ENV_LIB}={given}: an older archc op library (version {said.get('version', '?')}) without "
                        f"{', '.join(missing)}; rebuild it with `python3 -m exporters.ort_ops.build --{kind.value} -o FILE`")
    return lib


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m exporters.ort_ops.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--cpu", action="store_const", const=Kind.cpu, dest="kind", help="g++: the CPU kernel alone")
    which.add_argument("--cuda", action="store_const", const=Kind.cuda, dest="kind", help="nvcc: CPU and CUDA kernels")
    ap.add_argument("-o", "--out", type=Path, required=True, help="where to copy the library (an existing file: --force)")
    ap.add_argument("--force", action="store_true", help="replace the file at --out")
    ap.add_argument("--headers-out", type=Path, help="also copy onnxruntime's headers into this folder (for a machine without network)")
    args = ap.parse_args(argv)
    try:
        if os.path.lexists(args.out) and not args.force:
            raise UserError(f"-o {args.out}: exists; pass --force to replace it")
        if args.headers_out and os.path.lexists(args.headers_out) and not args.force:  # before the build and the -o copy
            raise UserError(f"--headers-out {args.headers_out}: exists; pass --force to write into it, or choose another folder")
        lib = build(args.kind)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib, args.out)
        if args.headers_out:
            shutil.copytree(headers(), args.headers_out, dirs_exist_ok=args.force)
    except (UserError, OSError) as e:
        print(f"{ap.prog}: {e}", file=sys.stderr)
        return 2
    print(f"{args.out} ({args.kind.value}; {args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
