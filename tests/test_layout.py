"""The script's layout (its header's table of contents): sections behind banner comments, in
the order of use, each using only what stands in it or above it, none much over 600 lines.
Read from the source text; nothing is run."""

from __future__ import annotations

import ast
import os
import re

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'acmebot')
BANNER = re.compile(r'^# ==== (.*?) =+$')
# The wiring of a run names what follows it, as a table of contents names its chapters.
WIRING = ('run', 'main')
MAX_SECTION_LINES = 650


def sections(lines: list[str]) -> list[tuple[int, str]]:
    """(first line number, title) of each section."""
    return [(number, match.group(1)) for number, line in enumerate(lines, 1)
            if (match := BANNER.match(line))]


def section_of(starts: list[tuple[int, str]], line: int) -> int:
    return max((index for index, (start, _) in enumerate(starts) if start <= line), default=0)


def top_level_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [name.id for target in node.targets for name in ast.walk(target)
                if isinstance(name, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


class RuntimeUses(ast.NodeVisitor):
    """The names a definition reads when it runs (annotations are not read: the script
    has `from __future__ import annotations`), less those it binds itself."""

    def __init__(self) -> None:
        self.uses: list[tuple[str, int]] = []
        self.bound: set[str] = set()

    def visit_arg(self, node: ast.arg) -> None:
        self.bound.add(node.arg)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.bound.add(node.name)
        for child in [*node.decorator_list, *node.args.defaults,
                      *(default for default in node.args.kw_defaults if default)]:
            self.visit(child)
        self.visit(node.args)
        for statement in node.body:
            self.visit(statement)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.bound.add(node.name)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.uses.append((node.id, node.lineno))
        else:
            self.bound.add(node.id)


def forward_references(source: str) -> list[str]:
    """Each name used in a section but defined in a later one, with where."""
    lines = source.splitlines()
    starts = sections(lines)
    tree = ast.parse(source)
    defined: dict[str, int] = {}
    for node in tree.body:
        for name in top_level_names(node):
            defined.setdefault(name, section_of(starts, node.lineno))
    found = []
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == 'TYPE_CHECKING':
            continue
        if isinstance(node, ast.FunctionDef) and node.name in WIRING:
            continue
        visitor = RuntimeUses()
        visitor.visit(node)
        own = set(top_level_names(node))
        here = section_of(starts, node.lineno)
        for name, line in visitor.uses:
            if name in visitor.bound - own or name not in defined:
                continue
            if defined[name] > here:
                found.append(f'line {line}: {name} (section "{starts[defined[name]][1]}") '
                             f'used in section "{starts[here][1]}"')
    return found


def read_script() -> str:
    with open(SCRIPT, encoding='utf-8') as file:
        return file.read()


def test_each_section_uses_only_what_stands_above_it():
    assert forward_references(read_script()) == []


def test_the_checker_finds_a_forward_reference():
    source = ('# ==== First ====\n\ndef early():\n    return late()\n\n\n'
              '# ==== Second ====\n\ndef late():\n    return early()\n\n\n'
              'def local_names(check=None):\n    def helper():\n        return check\n'
              '    return helper\n')
    assert forward_references(source) == [
        'line 4: late (section "Second") used in section "First"']


def test_the_table_of_contents_names_every_section_in_order():
    source = read_script()
    titles = [title for _, title in sections(source.splitlines())]
    docstring = ast.get_docstring(ast.parse(source)) or ''
    listed = docstring.split('Sections, in this order', 1)[1].splitlines()[2:]
    assert [line.strip() for line in listed if line.strip()] == titles


def test_no_section_is_much_longer_than_a_sitting():
    lines = read_script().splitlines()
    starts = sections(lines)
    ends = [start - 1 for start, _ in starts[1:]] + [len(lines)]
    sizes = {title: end - start + 1 for (start, title), end in zip(starts, ends)}
    assert {title: size for title, size in sizes.items() if size > MAX_SECTION_LINES} == {}


README = os.path.join(os.path.dirname(SCRIPT), 'README.md')


def readme_contents(lines: list[str]) -> list[str]:
    """The table of contents README.md should have: each '##' section with its '###'
    sections, linked by GitHub's anchors (lower case, punctuation dropped, spaces to
    hyphens, '-1', '-2' after a repeated title)."""
    entries: list[tuple[str, list[str]]] = []
    seen: dict[str, int] = {}
    fenced = False
    for line in lines:
        if line.startswith('```'):
            fenced = not fenced
        match = None if fenced else re.match(r'^(##|###) (.+)$', line)
        if match is None or match.group(2) == 'Contents':
            continue
        title = match.group(2)
        anchor = re.sub(r'[^\w\- ]', '', title.lower()).replace(' ', '-')
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        link = f'[{title}](#{anchor}{f"-{count}" if count else ""})'
        if match.group(1) == '##':
            entries.append((link, []))
        elif entries:
            entries[-1][1].append(link)
    return [f'* {head}' + (': ' + ', '.join(subs) if subs else '') for head, subs in entries]


def test_readme_table_of_contents_lists_every_section():
    with open(README) as file:
        lines = file.read().splitlines()
    start = lines.index('## Contents') + 2
    end = lines.index('', start)
    assert lines[start:end] == readme_contents(lines)
