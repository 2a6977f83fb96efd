"""agebias.search"""
