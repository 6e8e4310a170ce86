# Filled in by the record unit: csrc/record.h bindings.
