"""What every benchmark script prints and saves: its result as JSON, with the machine it ran on."""
import json
import os
import platform
import resource


def machine() -> str:
    return f"{platform.machine()} cpus={os.cpu_count()} python={platform.python_version()}"


def peak_rss_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def report(result: dict, json_path: str | None) -> None:
    result = {"machine": machine(), **result}
    print(json.dumps(result, indent=2))
    if json_path:
        with open(json_path, "w") as out:
            json.dump(result, out, indent=2)
