"""kernelflow's plugin hooks (:mod:`kernelflow.plugins.hookspecs`) and its
built-in plugins, which register through the ``kernelflow`` entry-point group
exactly as third-party plugins do. Nothing is imported here on purpose: the
built-ins load when the plugin host asks for them."""
