// A drawing pad: a round pen on paper (or chalk on a board when inverted). After each stroke the
// pad hands a PNG of itself to `onDrawn`, so the model reads what was drawn as soon as the pen lifts.

export class DrawingPad {
  constructor(canvas, { onDrawn, penInput, invertInput }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onDrawn = onDrawn;
    this.penInput = penInput;
    this.invertInput = invertInput;
    this.drawing = false;
    this.inked = false;
    this.last = null;
    this.emitted = 0; // drawings handed over; canvas.dataset.read says which one the panels show
    canvas.addEventListener("pointerdown", (e) => this.start(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", () => this.end());
    canvas.addEventListener("pointerleave", () => this.end());
    invertInput.addEventListener("change", () => this.invert());
    this.clear();
  }

  get colors() {
    return this.invertInput.checked ? { paper: "#111111", ink: "#f5f5f5" } : { paper: "#ffffff", ink: "#111111" };
  }

  clear() {
    this.ctx.fillStyle = this.colors.paper;
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.inked = false;
  }

  /** Swap paper and ink of what is already drawn, then read it again. */
  invert() {
    const image = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let i = 0; i < image.data.length; i += 4) {
      for (let c = 0; c < 3; c++) image.data[i + c] = 255 - image.data[i + c];
    }
    this.ctx.putImageData(image, 0, 0);
    if (this.inked) this.emit();
  }

  point(e) {
    const r = this.canvas.getBoundingClientRect();
    return { x: ((e.clientX - r.left) * this.canvas.width) / r.width, y: ((e.clientY - r.top) * this.canvas.height) / r.height };
  }

  start(e) {
    e.preventDefault();
    this.canvas.setPointerCapture?.(e.pointerId);
    this.drawing = true;
    this.last = this.point(e);
    this.stroke(this.last);
  }

  move(e) {
    if (!this.drawing) return;
    this.stroke(this.point(e));
  }

  stroke(p) {
    const ctx = this.ctx;
    ctx.strokeStyle = this.colors.ink;
    ctx.lineWidth = Number(this.penInput.value);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(this.last.x, this.last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    this.last = p;
    this.inked = true;
  }

  end() {
    if (!this.drawing) return;
    this.drawing = false;
    this.emit();
  }

  emit() {
    const n = ++this.emitted;
    this.canvas.dataset.emitted = String(n);
    this.canvas.toBlob((blob) => blob && this.onDrawn(blob, n), "image/png");
  }
}
