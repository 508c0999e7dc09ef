"""Reports people read: tables (:mod:`.tables`), the run summary rendered once for ``report.md`` and the
console (:mod:`.render`), and the accuracy-against-speed plot (:mod:`.plot`)."""
