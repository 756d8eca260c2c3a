// Render the math that pymdownx.arithmatex wraps in .arithmatex spans/divs, with the
// KaTeX copy shipped in this folder (the site loads nothing from the network).
function renderPynsmMath() {
  const options = {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  };
  // Arithmatex output in Markdown pages; notebook cells (mkdocs-jupyter) hold raw $...$.
  document.querySelectorAll(".arithmatex, .jp-MarkdownOutput, .jp-RenderedMarkdown")
    .forEach((element) => renderMathInElement(element, options));
}

if (typeof document$ !== "undefined") {
  // Material's instant navigation re-renders pages without a full reload.
  document$.subscribe(renderPynsmMath);
} else {
  document.addEventListener("DOMContentLoaded", renderPynsmMath);
}
