"""agebias.mitigation"""
