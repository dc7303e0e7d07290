"""MkDocs hooks: the home page is the README (its links into ``docs/`` made the site's), the
options page's table is generated from ``TrainConfig`` so it cannot fall behind the command
line, and the results' curves and the tuning studies' plots are served from
``benchmarks/results``, where the learning script and the tuner write them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
OPTIONS_MARKER = "<!-- options-table -->"
README_MARKER = "<!-- readme -->"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def options_table() -> str:
    from minerva.config import TrainConfig
    from minerva.train import _flag

    rows = ["| option | default | what it does |", "| --- | --- | --- |"]
    for option in dataclasses.fields(TrainConfig):
        default = option.default
        if isinstance(default, bool):
            flag = f"`{_flag(option.name)}`, `--no-{_flag(option.name)[2:]}`"
        else:
            flag = f"`{_flag(option.name)}`"
        help_text = option.metadata["help"]
        if "choices" in option.metadata:
            help_text += "; one of " + ", ".join(f"`{c}`" for c in option.metadata["choices"])
        rows.append(f"| {flag} | `{_cell(default)}` | {_cell(help_text)} |")
    return "\n".join(rows)


def on_files(files, config):
    results = ROOT / "benchmarks" / "results"
    images = [*results.rglob("curves*.png"), *results.glob("tuning-*/plots/*.png")]
    for image in sorted(images):
        files.append(File(image.relative_to(ROOT).as_posix(), src_dir=str(ROOT),
                          dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    if README_MARKER in markdown:
        readme = (ROOT / "README.md").read_text(encoding="utf-8").replace("](docs/", "](")
        markdown = markdown.replace(README_MARKER, readme)
    # images link to ../benchmarks/results/ (right beside the pages in the repository); in
    # the site those files sit at the root
    markdown = markdown.replace("](../benchmarks/results/", "](benchmarks/results/")
    if OPTIONS_MARKER in markdown:
        markdown = markdown.replace(OPTIONS_MARKER, options_table())
    return markdown
