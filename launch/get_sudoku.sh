#!/usr/bin/env bash
# Fetches the three public Sudoku CSVs the Sudoku configs use into DIR (default
# data/sudoku) and checks their sha256; or copies them from a local folder:
#   bash launch/get_sudoku.sh [DIR] [--from LOCAL_DIR]
# Sources (byte-exact files in public GitHub repositories, 10,000 rows each):
#   jerod92/puzzle_dataset @ c984165: sudoku_10000.csv            (Kaggle "1 million Sudoku games")
#   tilmanschweitzer/sudoku-solver @ 0cad575: sudoku-10000.csv    (Kaggle "9 million Sudoku", public domain)
#   madelyn-redick/AI_sudoku_solver @ 8648e23: sudoku_10000.csv   (Kaggle "9 million Sudoku")
set -euo pipefail
DIR="${1:-data/sudoku}"
FROM=""
if [[ "${2:-}" == "--from" ]]; then FROM="$3"; fi
mkdir -p "$DIR"
RAW=https://raw.githubusercontent.com
declare -A URL=(
  [sudoku_kaggle1m_10k_jerod92.csv]="$RAW/jerod92/puzzle_dataset/c98416539a837561e830023c99f7bc1f1564acda/sudoku_10000.csv"
  [sudoku_rohanrao9m_10k_tilmanschweitzer.csv]="$RAW/tilmanschweitzer/sudoku-solver/0cad575d86f1a4ff56541a98ee4ba112afc41bbb/sudoku-10000.csv"
  [sudoku_rohanrao9m_10k_madelynredick.csv]="$RAW/madelyn-redick/AI_sudoku_solver/8648e23908e21a2c37e9b24553af56b5f4777dc2/sudoku_10000.csv"
)
declare -A SHA=(
  [sudoku_kaggle1m_10k_jerod92.csv]=f359e3487f8e5cdf263768b2f163e3e3fe9fe93747aa5336a2e1bf8474890970
  [sudoku_rohanrao9m_10k_tilmanschweitzer.csv]=b7050f932c68f1e0fccca290249513ded3706082d2d39ad3fac35e2fa23e30ec
  [sudoku_rohanrao9m_10k_madelynredick.csv]=013a105b44cbe7518d3a56a5938d3375de11dcbc39b72e8d9deada3e3ab5a89c
)
for name in "${!URL[@]}"; do
  if [[ -n "$FROM" ]]; then cp "$FROM/$name" "$DIR/$name.part"
  else curl -fsSL "${URL[$name]}" -o "$DIR/$name.part"; fi
  echo "${SHA[$name]}  $DIR/$name.part" | sha256sum -c --quiet - || { rm -f "$DIR/$name.part"; exit 1; }
  mv "$DIR/$name.part" "$DIR/$name"
  echo "$DIR/$name"
done
