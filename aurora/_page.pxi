# Filled in by the page unit: csrc/page.h bindings.
