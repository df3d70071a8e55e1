"""Hardware vendors, named as the seed's timeline names its rows (`NVIDIA`, `AMD`, `Intel`, `ARM`, ...).

A backend says which vendor made each of its devices; where only a name is known (a CPU model, a GPU's
name, an OpenCL device's vendor string), `vendor_of_name` reads it. Pure Python.
"""

from __future__ import annotations

import re

# Order matters: the first pattern that matches the CPU model or GPU name names the vendor.
_VENDOR_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("NVIDIA", re.compile(r"nvidia|geforce|quadro|tesla|titan|\b[ahlbv]\d{2,3}\b|\bgh200\b|\brtx\b", re.I)),
    ("AMD", re.compile(r"\bamd\b|ryzen|epyc|threadripper|opteron|radeon|instinct|\bmi\d{2,3}", re.I)),
    ("Intel", re.compile(r"intel|xeon|core\(tm\)|pentium|celeron|atom|\barc\b", re.I)),
    ("Apple", re.compile(r"apple|\bm[1-4]\b", re.I)),
    ("IBM", re.compile(r"\bibm\b|power\d|\bpower\b", re.I)),
    ("Google", re.compile(r"\btpu\b|google", re.I)),
    ("ARM", re.compile(r"\barm\b|aarch64|neoverse|cortex|graviton|ampere|mali|kunpeng", re.I)),
)


# x86's CPUID vendor strings, as /proc/cpuinfo's `vendor_id` shows them, and the vendors they name.
CPUID_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}


def vendor_of_cpuinfo(cpuinfo: str) -> str:
    """The vendor named by the `vendor_id` line of /proc/cpuinfo's text (x86 only), or "unknown"."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return CPUID_VENDORS.get(value.strip(), "unknown")
    return "unknown"


def vendor_of_name(name: str) -> str:
    """The vendor of a CPU model or GPU name ("Intel", "AMD", "NVIDIA", "ARM", ...), or "unknown"."""
    for vendor, pattern in _VENDOR_PATTERNS:
        if pattern.search(name or ""):
            return vendor
    return "unknown"


def cpu_vendor(model: str, machine: str = "", system: str = "", cpuinfo: str = "") -> str:
    """The vendor of this host's CPU: from its CPUID vendor in /proc/cpuinfo's text, else its model name,
    else its architecture (an Apple Silicon Mac reports arm64 under Darwin; other aarch64 hosts are ARM
    designs)."""
    for found in (vendor_of_cpuinfo(cpuinfo), vendor_of_name(model)):
        if found != "unknown":
            return found
    if machine.lower() in ("arm64", "aarch64"):
        return "Apple" if system == "Darwin" else "ARM"
    return "unknown"
