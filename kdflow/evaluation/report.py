"""One self-contained HTML report per evaluated run: the verdict first, then the numbers and pictures.

Self-contained (pictures inlined as base64 PNG, no scripts, no external CSS) so the same file shows
in MLflow's artifact viewer, the KFP UI (an HTML artifact) and a browser offline.
"""

from __future__ import annotations

import base64
import html


def _pct(iv: dict | None) -> str:
    if iv is None:
        return "-"
    text = f"{100 * iv['value']:.2f}%"
    if iv.get("low") is not None:
        text += f" [{100 * iv['low']:.2f}, {100 * iv['high']:.2f}]"
    return text


def _table(rows: list[tuple], header: tuple) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def render_html(report: dict, title: str, images: dict[str, bytes]) -> str:
    """``report``: the evaluation step's dict (suite sections plus "gate" = Verdict.to_dict());
    ``images``: name -> PNG bytes."""
    gate, acc, conf = report["gate"], report["accuracy"], report.get("confidence", 0.95)
    verdict = ("PROMOTABLE" if gate["promotable"] else "REGISTERED, NOT PROMOTABLE" if gate["passed"]
               else "REFUSED")
    checks = [(("pass" if c["passed"] else "FAIL"), c["name"], "-" if c["value"] is None else f"{c['value']:.4g}",
               c["limit"], c["note"]) for c in [*gate["checks"], gate["champion"]]]
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='verdict {'ok' if gate['passed'] else 'bad'}'>{verdict}: {html.escape(gate['summary'])}</p>",
        "<h2>Gate</h2>", _table(checks, ("", "check", "value", "limit", "why")),
        f"<h2>Accuracy on the test split ({acc['samples']} images; {conf:.0%} bootstrap intervals)</h2>",
        _table([("student top-1", _pct(acc["student_top1"])), ("student top-5", _pct(acc["student_top5"])),
                ("teacher top-1", _pct(acc["teacher_top1"])), ("teacher top-5", _pct(acc["teacher_top5"])),
                ("student-teacher agreement", _pct(acc["agreement"])),
                ("student ECE", f"{100 * report['calibration']['ece']:.2f}%")], ("metric", "value")),
        "<h3>Per class</h3>",
        _table([(name, pc["count"], _pct(pc.get("student_interval")),
                 _pct({"value": pc["teacher"]}) if pc["teacher"] is not None else "-")
                for name, pc in acc["per_class"].items()], ("class", "images", "student [interval]", "teacher")),
    ]
    parts += [_img(png, name) for name, png in images.items()]
    cost = report.get("cost")
    if cost:
        s, t = cost["student"], cost["teacher"]
        parts += [f"<h2>Cost (this machine's CPU, {s['threads']} thread(s), student and teacher interleaved)</h2>",
                  _table([("parameters", f"{s['parameters']:,}", f"{t['parameters']:,}"),
                          ("size on disk (MB)", f"{s['size_bytes'] / 1e6:.3f}", f"{t['size_bytes'] / 1e6:.3f}"),
                          ("latency p50, batch 1 (ms)", f"{s['latency_p50_ms']:.3f}", f"{t['latency_p50_ms']:.3f}"),
                          ("latency p95, batch 1 (ms)", f"{s['latency_p95_ms']:.3f}", f"{t['latency_p95_ms']:.3f}"),
                          (f"throughput, batch {s['batch']} (images/s)", f"{s['throughput']:.1f}",
                           f"{t['throughput']:.1f}")], ("", "student", "teacher")),
                  "<p>" + ", ".join(f"{k.replace('_', ' ')}: {v:.2f}x" for k, v in cost["speedups"].items())
                  + "</p>"]
    privacy = report.get("privacy")
    if privacy:
        ci = "" if privacy.get("auc_low") is None else f" [{privacy['auc_low']:.3f}, {privacy['auc_high']:.3f}]"
        parts += ["<h2>Privacy: membership inference (loss threshold, Yeom et al. 2018)</h2>",
                  f"<p>Attack AUC {privacy['auc']:.3f}{ci} on {privacy['members']} training members against "
                  f"{privacy['nonmembers']} held-out images (0.5: the attack cannot tell them apart); advantage "
                  f"at the mean training loss {privacy['advantage']:.3f}.</p>"]
    if report.get("exports"):
        parts += ["<h2>Exports</h2>",
                  _table([(e["format"], e["file"], f"{e['size_bytes'] / 1e6:.3f}", f"{e['max_abs_diff']:.3g}",
                           f"{e['tolerance']:.3g}", e["verified_with"], "pass" if e["passed"] else "FAIL")
                          for e in report["exports"]],
                         ("format", "file", "MB", "max |diff| vs PyTorch", "tolerance", "verified with", ""))]
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}img{max-width:48%;margin:.5em}"
             ".verdict{font-weight:bold;padding:.5em}.ok{background:#e6f4e6}.bad{background:#fbe3e3}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
