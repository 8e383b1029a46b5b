/* A small, safe Markdown renderer for chat messages: fenced code blocks, inline code, bold,
 * italics, headings, bullet and numbered lists, paragraphs and line breaks.
 *
 * Safety by construction: the output is built with createElement and text nodes only; no string
 * is ever parsed as HTML, so `<script>` or `<img onerror=...>` in a message stays visible text.
 */
"use strict";

const Markdown = (() => {
  function el(tag, ...children) {
    const node = document.createElement(tag);
    for (const c of children) node.append(c);
    return node;
  }

  // `code`, **bold**, *italic* / _italic_ inside one line: text nodes and elements
  // (underscores only at word edges: snake_case and __dunder__ names stay as they are)
  function inline(text) {
    const out = [];
    const pattern = /`([^`]+)`|\*\*(.+?)\*\*|\*([^*\s][^*]*)\*|(?<!\w)_([^_\s][^_]*)_(?!\w)/g;
    let last = 0, m;
    while ((m = pattern.exec(text)) !== null) {
      if (m.index > last) out.push(document.createTextNode(text.slice(last, m.index)));
      if (m[1] !== undefined) out.push(el("code", m[1]));
      else if (m[2] !== undefined) out.push(el("strong", m[2]));
      else out.push(el("em", m[3] !== undefined ? m[3] : m[4]));
      last = pattern.lastIndex;
    }
    if (last < text.length) out.push(document.createTextNode(text.slice(last)));
    return out;
  }

  function linesWithBreaks(lines) {
    const out = [];
    lines.forEach((line, i) => {
      if (i) out.push(el("br"));
      out.push(...inline(line));
    });
    return out;
  }

  // one block of text between blank lines / code fences
  function block(lines, into) {
    let para = [];
    let list = null;
    const flush = () => {
      if (para.length) into.append(el("p", ...linesWithBreaks(para)));
      para = [];
    };
    for (const line of lines) {
      const heading = /^(#{1,6})\s+(.*)$/.exec(line);
      const bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
      const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
      if (heading) {
        flush(); list = null;
        into.append(el("h" + Math.min(heading[1].length + 2, 6), ...inline(heading[2])));
      } else if (bullet || numbered) {
        flush();
        const tag = bullet ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== tag) { list = el(tag); into.append(list); }
        list.append(el("li", ...inline((bullet || numbered)[1])));
      } else if (line.trim() === "") {
        flush(); list = null;
      } else {
        list = null;
        para.push(line);
      }
    }
    flush();
  }

  function render(text) {
    const root = document.createDocumentFragment();
    const lines = text.split("\n");
    let i = 0, plain = [];
    while (i < lines.length) {
      const fence = /^\s*```\s*([\w+-]*)\s*$/.exec(lines[i]);
      if (!fence) { plain.push(lines[i]); i++; continue; }
      block(plain, root); plain = [];
      const code = [];
      i++;
      while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) { code.push(lines[i]); i++; }
      i++;  // the closing fence (or the end of a reply still streaming)
      const codeEl = el("code", code.join("\n"));
      if (fence[1]) codeEl.dataset.lang = fence[1];
      root.append(el("pre", codeEl));
    }
    block(plain, root);
    return root;
  }

  return { render };
})();
