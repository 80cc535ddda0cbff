"""Built-in board plugins; each subpackage is registered under the `picofleet` entry-point group."""
