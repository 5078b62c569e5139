"""Visible text of an HTML page through the standard library's HTML parser, without scripts, styles and navigation."""

from __future__ import annotations

from html.parser import HTMLParser

SKIPPED = {"script", "style", "nav", "header", "footer", "aside", "noscript", "template", "svg", "form", "button", "iframe"}
BLOCKS = {"p", "div", "section", "article", "main", "li", "ul", "ol", "table", "tr", "br", "hr", "blockquote", "pre",
          "h1", "h2", "h3", "h4", "h5", "h6", "title", "dd", "dt", "figcaption"}
# every element name of the HTML standard, with the obsolete ones still common in old pages: only these are markup
ELEMENTS = frozenset("""
a abbr acronym address applet area article aside audio b base basefont bdi bdo bgsound big blink blockquote body br button
canvas caption center cite code col colgroup data datalist dd del details dfn dialog dir div dl dt em embed fieldset
figcaption figure font footer form frame frameset h1 h2 h3 h4 h5 h6 head header hgroup hr html i iframe img input ins
isindex kbd keygen label legend li link listing main map mark marquee math menu menuitem meta meter nav nobr noembed
noframes noscript object ol optgroup option output p param picture plaintext pre progress q rb rp rt rtc ruby s samp
script search section select slot small source spacer span strike strong style sub summary sup svg table tbody td
template textarea tfoot th thead time title tr track tt u ul var video wbr xmp
""".split())
VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in SKIPPED and tag not in VOID:
            self.skip_depth += 1
        elif tag in BLOCKS:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if tag in SKIPPED and self.skip_depth:
            self.skip_depth -= 1
        elif tag in BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)
