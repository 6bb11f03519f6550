"""Streams at run time: `--sources-file` lists one source URI a line, and edits to it add and remove streams.

`SourcesFile` reads the file at start (its URIs are streams after the `--camera` and
`--source` ones) and again whenever it changes (looked at every second) or on `request()`
(SIGHUP). Between two readings, a URI that appears more often than before is a new stream,
and one that appears less often ends the stream it started last. Streams keep their numbers:
a new stream takes the next number never used in this run, so a removed stream's number is
not reused and results of different streams never share one.

A new stream is opened here, off the loop, and starts from a zero state. The run ends when
every stream it has ended (files played out, `--max-frames`), as without a sources file; with
every stream removed it waits for the file to list one again. A removed one
is closed by the loop between two batches; its state and window are dropped (not kept in
the checkpoint: a stream added back later is a new stream from a zero state). A source
that cannot be opened, or that finds every slot the engines have taken, is reported and
the run goes on (it is tried again at the file's next change).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable

from runtime.errors import EdgeRunError, SourceError, UsageError
from runtime.pipeline import Pipeline
from runtime.service.watch import FileWatch
from runtime.sources import Source

log = logging.getLogger("edge_run.streams")

WATCH_EVERY = 1.0  # seconds between looks at the sources file


def read_sources_file(path: str | os.PathLike, allow_empty: bool = False) -> list[str]:
    """URIs listed one per line (blank lines and # comments skipped); a GStreamer pipeline may
    contain spaces, so a line is one URI as it stands."""
    try:
        with open(path, encoding="utf-8") as listing:
            uris = [line.strip() for line in listing]
    except OSError as exc:
        raise SourceError(f"cannot read sources file {path}: {exc.strerror or exc}") from exc
    uris = [uri for uri in uris if uri and not uri.startswith("#")]
    if not uris and not allow_empty:
        raise UsageError(f"sources file {path} lists no source (one URI per line; # starts a comment)")
    return uris


class SourcesFile(FileWatch):
    """Keeps the pipeline's file-listed streams equal to what `path` lists.

    `listed` maps the stream numbers the run started with to the URIs the file gave them;
    `open_uri(uri, number)` makes an opened source (`runtime.sources.open_source` with the
    run's capture settings).
    """

    def __init__(self, path: str | os.PathLike, pipeline: Pipeline, listed: dict[int, str],
                 open_uri: Callable[[str, int], Source], watch_every: float = WATCH_EVERY) -> None:
        self.path = Path(path)
        self.pipeline = pipeline
        self.streams = dict(listed)  # number -> URI, in the order the streams were started
        self.open_uri = open_uri
        self.refused = 0  # listed sources that could not be opened or found no free slot
        self._refused_numbers: set[int] = set()  # filled on the loop thread; retried at the file's next change
        super().__init__("sources-file", self.path, lambda _asked: self.apply(), every=watch_every)

    def apply(self) -> None:
        """Read the file and add or remove streams so the run matches it."""
        try:
            wanted = read_sources_file(self.path, allow_empty=True)
        except EdgeRunError as exc:
            log.error("sources file: %s; the streams stay as they are", exc)
            return
        for number in list(self._refused_numbers):
            self._refused_numbers.discard(number)
            self.streams.pop(number, None)
        left = Counter(wanted)
        kept: dict[int, str] = {}
        for number, uri in self.streams.items():
            if left[uri] > 0:
                left[uri] -= 1
                kept[number] = uri
        # Of several streams of one URI, the ones started last go first.
        for number in reversed([n for n in self.streams if n not in kept]):
            self.pipeline.remove_source(number)
            log.warning("sources file: removing stream %d (%s)", number, self.streams[number])
        self.streams = kept
        for uri in wanted:
            if left[uri] > 0:
                left[uri] -= 1
                self._add(uri)

    def _add(self, uri: str) -> None:
        try:
            source = self.open_uri(uri, -1)
        except EdgeRunError as exc:
            self.refused += 1
            log.error("sources file: cannot add %s: %s", uri, exc)
            return
        number = self.pipeline.add_source(source, on_refused=self._on_refused)
        self.streams[number] = uri
        log.warning("sources file: adding stream %d (%s)", number, source.name)

    def _on_refused(self, number: int, why: str) -> None:
        self.refused += 1
        self._refused_numbers.add(number)
        log.error("sources file: %s", why)
