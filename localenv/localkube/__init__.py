"""The local cluster's parts as a package (imported with localenv on sys.path)."""
